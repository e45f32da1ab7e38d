package guard

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Identity is everything the guard may know about a client: its source
// address and, once CONNECT has been read, its client ID and username,
// and its certificate. Empty fields are unknown.
type Identity struct {
	Addr     netip.Addr
	ClientID string
	// Username is the verified username, or the one claimed in CONNECT
	// where nothing verified it yet (authentication failures).
	Username string
	// CertFingerprint is the lowercase hex SHA-256 of the leaf
	// certificate's DER; CertSerial its serial number in lowercase hex.
	// CertIdentity computes both.
	CertFingerprint string
	CertSerial      string
}

// CertIdentity returns the fingerprint and serial of cert as Identity
// expects them.
func CertIdentity(cert *x509.Certificate) (fingerprint, serial string) {
	if cert == nil {
		return "", ""
	}
	sum := sha256.Sum256(cert.Raw)
	if cert.SerialNumber != nil && cert.SerialNumber.Sign() >= 0 {
		serial = cert.SerialNumber.Text(16)
	}
	return hex.EncodeToString(sum[:]), serial
}

// AddrOf returns the IP address of a net.Addr (TCP, UDP, IP), without
// allocating for *net.TCPAddr; the zero Addr when there is none.
func AddrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch v := a.(type) {
	case *net.TCPAddr:
		ip = v.IP
	case *net.UDPAddr:
		ip = v.IP
	case *net.IPAddr:
		ip = v.IP
	default:
		if a == nil {
			return netip.Addr{}
		}
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		return ap.Addr().Unmap()
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// Kind is what a ban matches.
type Kind string

// Ban kinds.
const (
	KindIP              Kind = "ip"               // an address or CIDR prefix, IPv4 or IPv6
	KindClientID        Kind = "client_id"        // an MQTT client identifier
	KindUsername        Kind = "username"         // a username
	KindCertFingerprint Kind = "cert_fingerprint" // SHA-256 of the certificate, hex
	KindCertSerial      Kind = "cert_serial"      // certificate serial number, hex (any issuer)
)

// maxValueLen bounds identity values (an MQTT string's maximum).
const maxValueLen = 65535

// Normalize checks value for kind and returns its canonical form: a
// masked prefix for addresses ("10.0.0.7" → "10.0.0.7/32"), lowercase hex
// without separators for certificates.
func Normalize(kind Kind, value string) (string, error) {
	switch kind {
	case KindIP:
		p, err := parsePrefix(value)
		if err != nil {
			return "", err
		}
		return p.String(), nil
	case KindClientID, KindUsername:
		if value == "" || len(value) > maxValueLen || !utf8.ValidString(value) {
			return "", fmt.Errorf("guard: %s must be 1..%d bytes of UTF-8", kind, maxValueLen)
		}
		return value, nil
	case KindCertFingerprint:
		h := normHex(value)
		if len(h) != 64 || !isHex(h) {
			return "", fmt.Errorf("guard: certificate fingerprint %q is not 64 hex digits (SHA-256 of the DER certificate, e.g. from: openssl x509 -noout -fingerprint -sha256)", clip(value))
		}
		return h, nil
	case KindCertSerial:
		h := strings.TrimLeft(normHex(value), "0")
		if h == "" {
			h = "0"
		}
		if len(value) == 0 || len(h) > 40 || !isHex(h) {
			return "", fmt.Errorf("guard: certificate serial %q is not 1..20 bytes of hex", clip(value))
		}
		return h, nil
	}
	return "", fmt.Errorf("guard: unknown ban kind %q: use ip, client_id, username, cert_fingerprint or cert_serial", clip(string(kind)))
}

// parsePrefix reads an address or a CIDR prefix, masked; IPv4-mapped IPv6
// addresses become IPv4.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("guard: %q is not an address or CIDR prefix (like 192.0.2.0/24 or 2001:db8::/32)", clip(s))
		}
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() {
			a = a.Unmap()
			bits -= 96
			if bits < 0 {
				return netip.Prefix{}, fmt.Errorf("guard: prefix %q is wider than the IPv4-mapped range", clip(s))
			}
		}
		return netip.PrefixFrom(a, bits).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("guard: %q is not an address or CIDR prefix (like 192.0.2.0/24 or 2001:db8::/32)", clip(s))
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// normHex lowercases s and drops ':' and ' ' separators; it returns s
// itself (no allocation) when there is nothing to change.
func normHex(s string) string {
	clean := true
	for i := 0; i < len(s) && clean; i++ {
		c := s[i]
		clean = c != ':' && c != ' ' && (c < 'A' || c > 'Z')
	}
	if clean {
		return s
	}
	return strings.ToLower(strings.NewReplacer(":", "", " ", "").Replace(s))
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// clip shortens a peer- or file-controlled string for a log line or error.
func clip(s string) string {
	const n = 128
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}
