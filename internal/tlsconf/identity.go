package tlsconf

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// IdentitySource selects which part of a client certificate names the client.
type IdentitySource int

const (
	// IdentityNone (the zero value) maps nothing.
	IdentityNone IdentitySource = iota
	// IdentityCN is the first Common Name of the subject (mosquitto
	// `use_identity_as_username`).
	IdentityCN
	// IdentitySubjectDN is the full subject in RFC 2253 form exactly as
	// OpenSSL prints it (mosquitto `use_subject_as_username`), e.g.
	// "CN=sensor-1,OU=line 3,O=Factory".
	IdentitySubjectDN
	// IdentitySANDNS is the first DNS subject alternative name.
	IdentitySANDNS
	// IdentitySANURI is the first URI subject alternative name.
	IdentitySANURI
	// IdentitySANEmail is the first email subject alternative name.
	IdentitySANEmail
	// IdentitySPIFFE is the certificate's SPIFFE ID: its only URI SAN, which
	// must be a valid spiffe://trust-domain/path URI.
	IdentitySPIFFE
	// IdentitySHA256Fingerprint is the lower-case hex SHA-256 of the
	// certificate's DER encoding.
	IdentitySHA256Fingerprint
)

var identityNames = map[IdentitySource]string{
	IdentityNone:              "none",
	IdentityCN:                "cn",
	IdentitySubjectDN:         "subject",
	IdentitySANDNS:            "san-dns",
	IdentitySANURI:            "san-uri",
	IdentitySANEmail:          "san-email",
	IdentitySPIFFE:            "spiffe",
	IdentitySHA256Fingerprint: "sha256",
}

func (s IdentitySource) String() string {
	if n, ok := identityNames[s]; ok {
		return n
	}
	return fmt.Sprintf("IdentitySource(%d)", int(s))
}

// ParseIdentitySource parses the configuration names "none", "cn",
// "subject", "san-dns", "san-uri", "san-email", "spiffe" and "sha256"
// (case-insensitive; "dn" and "fingerprint" are accepted as synonyms).
func ParseIdentitySource(s string) (IdentitySource, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	switch v {
	case "dn":
		return IdentitySubjectDN, nil
	case "fingerprint":
		return IdentitySHA256Fingerprint, nil
	}
	for k, n := range identityNames {
		if n == v {
			return k, nil
		}
	}
	return IdentityNone, fmt.Errorf("tlsconf: unknown certificate identity source %q (want cn, subject, san-dns, san-uri, san-email, spiffe or sha256)", s)
}

// ErrNoIdentity is returned (wrapped) when a certificate lacks the field an
// IdentitySource asks for.
var ErrNoIdentity = errors.New("tlsconf: certificate has no such identity")

// Identity returns the identity of cert according to src. It fails with an
// error wrapping ErrNoIdentity when the field is absent or empty, and when
// the value contains a NUL or control byte (which could spoof another name).
func Identity(cert *x509.Certificate, src IdentitySource) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	var v string
	switch src {
	case IdentityCN:
		v = FirstCommonName(cert)
	case IdentitySubjectDN:
		dn, err := SubjectDN(cert)
		if err != nil {
			return "", err
		}
		v = dn
	case IdentitySANDNS:
		if len(cert.DNSNames) > 0 {
			v = cert.DNSNames[0]
		}
	case IdentitySANURI:
		if len(cert.URIs) > 0 {
			v = cert.URIs[0].String()
		}
	case IdentitySANEmail:
		if len(cert.EmailAddresses) > 0 {
			v = cert.EmailAddresses[0]
		}
	case IdentitySPIFFE:
		id, err := spiffeID(cert)
		if err != nil {
			return "", err
		}
		v = id
	case IdentitySHA256Fingerprint:
		sum := sha256.Sum256(cert.Raw)
		v = hex.EncodeToString(sum[:])
	default:
		return "", fmt.Errorf("tlsconf: identity source %v cannot name a client", src)
	}
	if err := CheckIdentityValue(v); err != nil {
		return "", fmt.Errorf("%w: %v %s", ErrNoIdentity, src, err.Error())
	}
	return v, nil
}

// Reasons CheckIdentityValue refuses a value.
var (
	errIdentityEmpty   = errors.New("missing")
	errIdentityUTF8    = errors.New("is not valid UTF-8")
	errIdentityControl = errors.New("contains a control character")
)

// CheckIdentityValue checks a value that is to become a client's MQTT
// identity (username or client ID), whether Identity took it from a
// certificate or a trusted load balancer reported it (the PROXY v2 CN): it
// must not be empty, must be valid UTF-8, and must hold no control
// character (C0, DEL, C1) or bidirectional formatting character, which
// could make it print as another name, forge log lines or drive a
// terminal. Identity applies it to every value it returns.
func CheckIdentityValue(v string) error {
	if v == "" {
		return errIdentityEmpty
	}
	if !utf8.ValidString(v) {
		return errIdentityUTF8
	}
	for _, r := range v {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) || unicode.Is(unicode.Bidi_Control, r) {
			return errIdentityControl
		}
	}
	return nil
}

// FirstCommonName returns the first commonName attribute in the subject, as
// Mosquitto does (Go's Subject.CommonName holds the last one), or "" when
// there is none. It is the rule of IdentityCN, exported so that every part
// of Moat names a certificate the same way.
func FirstCommonName(cert *x509.Certificate) string {
	for _, a := range cert.Subject.Names {
		if a.Type.Equal(oidCN) {
			if s, ok := a.Value.(string); ok {
				return s
			}
			return ""
		}
	}
	return ""
}

func spiffeID(cert *x509.Certificate) (string, error) {
	var ids []string
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			ids = append(ids, u.String())
		}
	}
	if len(ids) == 0 {
		return "", fmt.Errorf("%w: no spiffe:// URI SAN", ErrNoIdentity)
	}
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: a SPIFFE SVID must have exactly one URI SAN, found %d", ErrNoIdentity, len(cert.URIs))
	}
	u := cert.URIs[0]
	if u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" ||
		strings.ToLower(u.Host) != u.Host || strings.HasSuffix(u.Path, "/") || strings.Contains(u.Path, "//") {
		return "", fmt.Errorf("%w: %q is not a valid SPIFFE ID", ErrNoIdentity, u.String())
	}
	return u.String(), nil
}

// IdentityMapping maps a verified client certificate to the MQTT username
// and client ID. The zero value maps nothing. It is a plain value, safe to
// copy and to use concurrently.
type IdentityMapping struct {
	// Username, when not IdentityNone, replaces the CONNECT username and
	// password with the certificate identity (mosquitto
	// `use_identity_as_username` is IdentityCN, `use_subject_as_username`
	// is IdentitySubjectDN).
	Username IdentitySource
	// ClientID, when not IdentityNone, replaces the CONNECT client ID with
	// the certificate identity.
	ClientID IdentitySource
	// BindClientID, when not empty, is a ClientIDBinding template the
	// client ID must match, so a device cannot connect as another device.
	BindClientID string
}

func (m IdentityMapping) validate() error {
	var errs []error
	for _, s := range []IdentitySource{m.Username, m.ClientID} {
		if _, ok := identityNames[s]; !ok {
			errs = append(errs, fmt.Errorf("tlsconf: unknown identity source %d", int(s)))
		}
	}
	if m.BindClientID != "" {
		if err := (ClientIDBinding{Template: m.BindClientID}).validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// MapIdentity applies the listener's IdentityMapping to a connection that
// completed its handshake with this Manager's TLSConfig (so its certificate
// was verified), and the CONNECT username and client ID.
func (m *Manager) MapIdentity(cs tls.ConnectionState, connectUser, connectClientID string) (Mapped, error) {
	var leaf *x509.Certificate
	if len(cs.PeerCertificates) > 0 {
		leaf = cs.PeerCertificates[0]
	}
	return m.cfg.Identity.Apply(leaf, connectUser, connectClientID)
}

// Mapped is the outcome of IdentityMapping.Apply.
type Mapped struct {
	// Username is the certificate identity when Mapping.Username is set,
	// else the CONNECT username unchanged.
	Username string
	// UsernameFromCert reports that Username came from the certificate; the
	// broker must then ignore the CONNECT password.
	UsernameFromCert bool
	// ClientID is the client ID to use.
	ClientID string
}

// Apply maps cert (the verified leaf, or nil when the client sent none) and
// the CONNECT username and client ID. It fails when the mapping needs a
// certificate field that is missing, or the client ID breaks the binding;
// the broker must then refuse the connection (v5: 0x85 Client Identifier not
// valid or 0x87 Not authorized).
func (m IdentityMapping) Apply(cert *x509.Certificate, connectUser, connectClientID string) (Mapped, error) {
	out := Mapped{Username: connectUser, ClientID: connectClientID}
	if cert == nil {
		if m.Username != IdentityNone || m.ClientID != IdentityNone || m.BindClientID != "" {
			return out, fmt.Errorf("%w: the listener maps identities from certificates but the client sent none", ErrNoIdentity)
		}
		return out, nil
	}
	if m.Username != IdentityNone {
		u, err := Identity(cert, m.Username)
		if err != nil {
			return out, err
		}
		out.Username, out.UsernameFromCert = u, true
	}
	if m.ClientID != IdentityNone {
		id, err := Identity(cert, m.ClientID)
		if err != nil {
			return out, err
		}
		out.ClientID = id
	}
	if m.BindClientID != "" {
		if err := (ClientIDBinding{Template: m.BindClientID}).Check(cert, out.ClientID); err != nil {
			return out, err
		}
	}
	return out, nil
}

// ClientIDBinding ties the MQTT client ID to the client certificate.
//
// Template is the client ID the certificate allows, with placeholders
// {cn}, {subject}, {san-dns}, {san-uri}, {san-email}, {spiffe} and {sha256}
// replaced by the certificate's identities (see IdentitySource). A trailing
// "*" allows any suffix: "{cn}" requires the client ID to equal the CN,
// "{cn}/*" allows "sensor-1/a", "sensor-1/b", ...
type ClientIDBinding struct {
	Template string
}

// ErrClientIDMismatch is returned (wrapped) by ClientIDBinding.Check.
var ErrClientIDMismatch = errors.New("tlsconf: client ID not allowed for this certificate")

func (b ClientIDBinding) validate() error {
	_, err := b.expand(nil)
	return err
}

// expand substitutes placeholders; with cert nil it only checks the syntax.
func (b ClientIDBinding) expand(cert *x509.Certificate) (string, error) {
	t := b.Template
	if k := strings.IndexByte(t, '*'); k >= 0 && k != len(t)-1 {
		return "", fmt.Errorf("tlsconf: client ID template %q: '*' is allowed only at the end", b.Template)
	}
	var out strings.Builder
	for {
		i := strings.IndexByte(t, '{')
		if i < 0 {
			if strings.ContainsRune(t, '}') {
				return "", fmt.Errorf("tlsconf: client ID template %q has an unmatched '}'", b.Template)
			}
			out.WriteString(t)
			break
		}
		out.WriteString(t[:i])
		j := strings.IndexByte(t[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("tlsconf: client ID template %q has an unclosed '{'", b.Template)
		}
		name := t[i+1 : i+j]
		src, err := ParseIdentitySource(name)
		if err != nil || src == IdentityNone {
			return "", fmt.Errorf("tlsconf: client ID template %q: unknown placeholder {%s}", b.Template, name)
		}
		if cert != nil {
			v, err := Identity(cert, src)
			if err != nil {
				return "", err
			}
			out.WriteString(v)
		}
		t = t[i+j+1:]
	}
	return out.String(), nil
}

// Check reports whether clientID is allowed for cert. The error wraps
// ErrClientIDMismatch (or ErrNoIdentity when the certificate lacks a field
// the template uses).
func (b ClientIDBinding) Check(cert *x509.Certificate, clientID string) error {
	tmpl, wildcard := strings.CutSuffix(b.Template, "*")
	want, err := ClientIDBinding{Template: tmpl}.expand(cert)
	if err != nil {
		return err
	}
	if wildcard {
		want += "*"
		if strings.HasPrefix(clientID, want[:len(want)-1]) {
			return nil
		}
	} else if clientID == want {
		return nil
	}
	return fmt.Errorf("%w: client ID %q does not match %q", ErrClientIDMismatch, clientID, want)
}
