package tlsconf

import (
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DefaultCipherSuites are the TLS 1.2 cipher suites Moat offers when
// ListenerConfig.CipherSuites is empty: ECDHE key exchange (forward secrecy)
// with an AEAD cipher only, as NIST SP 800-52 Rev. 2 recommends. No RSA key
// exchange, CBC, RC4, 3DES, NULL or EXPORT suite is ever in this list.
// ChaCha20-Poly1305 is kept for devices without AES hardware. TLS 1.3 suites
// are not configurable in Go; all of them are AEAD with forward secrecy.
//
// The slice is shared: callers must not modify it.
var DefaultCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// DefaultCurvePreferences is the key exchange order used when
// ListenerConfig.CurvePreferences is empty: the hybrid post-quantum
// X25519MLKEM768 first, then classical X25519, P-256 and P-384.
//
// The slice is shared: callers must not modify it.
var DefaultCurvePreferences = []tls.CurveID{
	tls.X25519MLKEM768,
	tls.X25519,
	tls.CurveP256,
	tls.CurveP384,
}

// suiteInfo describes a cipher suite in the vocabulary of OpenSSL cipher strings.
type suiteInfo struct {
	id      uint16
	openssl string // OpenSSL name, "" for TLS 1.3 suites
	kx      string // "ECDHE", "RSA", "" (TLS 1.3)
	au      string // "RSA", "ECDSA", ""
	enc     string // "AESGCM128", "AESGCM256", "CHACHA20", "AES128", "AES256", "3DES", "RC4"
	mac     string // "AEAD", "SHA1", "SHA256", "SHA384"
	tls13   bool
}

// secure reports whether the suite meets the policy: forward secrecy and AEAD.
func (s suiteInfo) secure() bool {
	return s.tls13 || (s.kx == "ECDHE" && s.mac == "AEAD")
}

func (s suiteInfo) whyInsecure() string {
	var why []string
	if s.kx == "RSA" {
		why = append(why, "RSA key exchange (no forward secrecy)")
	}
	switch s.enc {
	case "RC4":
		why = append(why, "RC4")
	case "3DES":
		why = append(why, "3DES")
	}
	if s.mac != "AEAD" {
		why = append(why, "CBC mode (not AEAD)")
	}
	return strings.Join(why, ", ")
}

var opensslNames = map[uint16]string{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       "ECDHE-ECDSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       "ECDHE-ECDSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         "ECDHE-RSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         "ECDHE-RSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   "ECDHE-RSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA:          "ECDHE-ECDSA-AES128-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA:          "ECDHE-ECDSA-AES256-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA:            "ECDHE-RSA-AES128-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA:            "ECDHE-RSA-AES256-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256:       "ECDHE-ECDSA-AES128-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256:         "ECDHE-RSA-AES128-SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_RC4_128_SHA:              "ECDHE-ECDSA-RC4-SHA",
	tls.TLS_ECDHE_RSA_WITH_RC4_128_SHA:                "ECDHE-RSA-RC4-SHA",
	tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA:           "ECDHE-RSA-DES-CBC3-SHA",
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256:               "AES128-GCM-SHA256",
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384:               "AES256-GCM-SHA384",
	tls.TLS_RSA_WITH_AES_128_CBC_SHA:                  "AES128-SHA",
	tls.TLS_RSA_WITH_AES_256_CBC_SHA:                  "AES256-SHA",
	tls.TLS_RSA_WITH_AES_128_CBC_SHA256:               "AES128-SHA256",
	tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA:                 "DES-CBC3-SHA",
	tls.TLS_RSA_WITH_RC4_128_SHA:                      "RC4-SHA",
}

// suites is every suite Go implements, described for OpenSSL matching.
var suites = buildSuites()

func buildSuites() []suiteInfo {
	var out []suiteInfo
	all := append(tls.CipherSuites(), tls.InsecureCipherSuites()...)
	for _, cs := range all {
		n := cs.Name
		s := suiteInfo{id: cs.ID, openssl: opensslNames[cs.ID]}
		if slices.Equal(cs.SupportedVersions, []uint16{tls.VersionTLS13}) {
			s.tls13, s.mac = true, "AEAD"
			out = append(out, s)
			continue
		}
		if s.openssl == "" {
			continue // a suite this table does not know; never selectable by name
		}
		switch {
		case strings.Contains(n, "_ECDHE_ECDSA_"):
			s.kx, s.au = "ECDHE", "ECDSA"
		case strings.Contains(n, "_ECDHE_RSA_"):
			s.kx, s.au = "ECDHE", "RSA"
		default:
			s.kx, s.au = "RSA", "RSA"
		}
		switch {
		case strings.Contains(n, "AES_128_GCM"):
			s.enc, s.mac = "AESGCM128", "AEAD"
		case strings.Contains(n, "AES_256_GCM"):
			s.enc, s.mac = "AESGCM256", "AEAD"
		case strings.Contains(n, "CHACHA20"):
			s.enc, s.mac = "CHACHA20", "AEAD"
		case strings.Contains(n, "AES_128_CBC"):
			s.enc = "AES128"
		case strings.Contains(n, "AES_256_CBC"):
			s.enc = "AES256"
		case strings.Contains(n, "3DES"):
			s.enc = "3DES"
		case strings.Contains(n, "RC4"):
			s.enc = "RC4"
		}
		if s.mac == "" {
			switch {
			case strings.HasSuffix(n, "_SHA256"):
				s.mac = "SHA256"
			case strings.HasSuffix(n, "_SHA384"):
				s.mac = "SHA384"
			default:
				s.mac = "SHA1"
			}
		}
		out = append(out, s)
	}
	return out
}

// aliases maps OpenSSL cipher-string aliases to a predicate over suites.
// Aliases that select only suites Go does not implement (DHE, PSK, CCM,
// CAMELLIA, anonymous, NULL, EXPORT, ...) select nothing.
var aliases = map[string]func(s suiteInfo) bool{
	"ALL":     func(suiteInfo) bool { return true },
	"DEFAULT": func(suiteInfo) bool { return true },
	"HIGH":    func(s suiteInfo) bool { return s.enc != "3DES" && s.enc != "RC4" },
	"MEDIUM":  func(s suiteInfo) bool { return s.enc == "3DES" || s.enc == "RC4" },
	"KRSA":    func(s suiteInfo) bool { return s.kx == "RSA" },
	"RSA":     func(s suiteInfo) bool { return s.kx == "RSA" },
	"ARSA":    func(s suiteInfo) bool { return s.au == "RSA" },
	"KECDHE":  func(s suiteInfo) bool { return s.kx == "ECDHE" },
	"KEECDH":  func(s suiteInfo) bool { return s.kx == "ECDHE" },
	"ECDHE":   func(s suiteInfo) bool { return s.kx == "ECDHE" },
	"EECDH":   func(s suiteInfo) bool { return s.kx == "ECDHE" },
	"ECDH":    func(s suiteInfo) bool { return s.kx == "ECDHE" },
	"AECDSA":  func(s suiteInfo) bool { return s.au == "ECDSA" },
	"ECDSA":   func(s suiteInfo) bool { return s.au == "ECDSA" },
	"AESGCM":  func(s suiteInfo) bool { return strings.HasPrefix(s.enc, "AESGCM") },
	"AES":     func(s suiteInfo) bool { return strings.HasPrefix(s.enc, "AES") },
	"AES128":  func(s suiteInfo) bool { return s.enc == "AES128" || s.enc == "AESGCM128" },
	"AES256":  func(s suiteInfo) bool { return s.enc == "AES256" || s.enc == "AESGCM256" },
	"CHACHA20": func(s suiteInfo) bool {
		return s.enc == "CHACHA20"
	},
	"3DES":    func(s suiteInfo) bool { return s.enc == "3DES" },
	"RC4":     func(s suiteInfo) bool { return s.enc == "RC4" },
	"SHA1":    func(s suiteInfo) bool { return s.mac == "SHA1" },
	"SHA":     func(s suiteInfo) bool { return s.mac == "SHA1" },
	"SHA256":  func(s suiteInfo) bool { return s.mac == "SHA256" || s.enc == "AESGCM128" || s.enc == "CHACHA20" },
	"SHA384":  func(s suiteInfo) bool { return s.mac == "SHA384" || s.enc == "AESGCM256" },
	"TLSV1.2": func(s suiteInfo) bool { return s.mac != "SHA1" },
	"TLSV1":   func(s suiteInfo) bool { return s.mac == "SHA1" },
	"SSLV3":   func(s suiteInfo) bool { return s.mac == "SHA1" },
}

// emptyAliases are aliases OpenSSL knows that select no suite Go implements.
var emptyAliases = []string{
	"LOW", "EXPORT", "EXP", "ENULL", "NULL", "ANULL", "ADH", "AECDH",
	"COMPLEMENTOFDEFAULT", "COMPLEMENTOFALL", "KEDH", "KDHE", "EDH", "DHE", "DH",
	"KDHR", "KDHD", "ADSS", "DSS", "PSK", "KPSK", "KECDHEPSK", "KDHEPSK", "KRSAPSK",
	"APSK", "SRP", "KSRP", "ASRP", "AESCCM", "AESCCM8", "CAMELLIA", "CAMELLIA128",
	"CAMELLIA256", "ARIA", "ARIA128", "ARIA256", "ARIAGCM", "SEED", "IDEA", "MD5",
	"GOST94", "GOST89MAC", "KGOST", "AGOST", "AGOST01", "AGOST12", "ECCDRAFT", "ANON",
}

// unsupportedPrefixes are prefixes and suffixes of OpenSSL cipher names Go
// does not implement; such names are ignored (reported, not an error).
var unsupportedPrefixes = []string{
	"DHE-", "EDH-", "ADH-", "AECDH-", "DH-", "ECDH-", "PSK-", "RSA-PSK-", "ECDHE-PSK-",
	"SRP-", "CAMELLIA", "ARIA", "SEED-", "IDEA-", "EXP-", "EXP1024-", "NULL-", "GOST",
}

// ParseOpenSSLCiphers translates an OpenSSL cipher string, as found in
// mosquitto.conf's `ciphers` key, into Go TLS 1.2 cipher suite IDs.
//
// Accepted forms: cipher names (ECDHE-RSA-AES128-GCM-SHA256), aliases (HIGH,
// ECDHE, EECDH, AESGCM, aRSA, ...), combinations with '+' (EECDH+AESGCM), the
// prefixes '!' and '-' (remove), '+' (move to the end: accepted, has no effect
// because Go orders suites itself), and @STRENGTH / @SECLEVEL=n (ignored),
// separated by ':', ',' or spaces.
//
// Suites that break the policy (no forward secrecy or not AEAD) are refused
// with an error when named explicitly, and silently left out when only an
// alias selects them, unless allowInsecure is true. In FIPS 140-3 mode the
// same holds, whatever allowInsecure says, for suites that mode does not
// approve (ChaCha20-Poly1305). Cipher names OpenSSL knows
// but Go does not implement (DHE, CCM, CAMELLIA, PSK, ...) and TLS 1.3 suite
// names are left out and reported in ignored. An unknown name, or a string
// that selects no suite, is an error.
func ParseOpenSSLCiphers(spec string, allowInsecure bool) (ids []uint16, ignored []string, err error) {
	var (
		selected []uint16
		killed   = map[uint16]bool{}
		errs     []error
	)
	tokens := strings.FieldsFunc(spec, func(r rune) bool { return r == ':' || r == ',' || r == ' ' || r == '\t' })
	if len(tokens) == 0 {
		return nil, nil, errors.New("tlsconf: empty cipher string")
	}
	for _, tok := range tokens {
		op := byte(0)
		if strings.ContainsRune("!-+", rune(tok[0])) {
			op, tok = tok[0], tok[1:]
		}
		if tok == "" {
			errs = append(errs, errors.New("tlsconf: cipher string has an empty element"))
			continue
		}
		if tok[0] == '@' { // @STRENGTH, @SECLEVEL=n: ordering and levels are Go's own
			continue
		}
		matches, explicit, ign, err := matchCipherToken(tok)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ignored = append(ignored, ign...)
		switch op {
		case '!':
			for _, id := range matches {
				killed[id] = true
			}
			selected = slices.DeleteFunc(selected, func(id uint16) bool { return killed[id] })
		case '-':
			selected = slices.DeleteFunc(selected, func(id uint16) bool { return slices.Contains(matches, id) })
		case '+':
			// Reordering only; Go chooses the order of suites itself.
		default:
			for _, id := range matches {
				if killed[id] || slices.Contains(selected, id) {
					continue
				}
				s := suiteByID(id)
				if !s.secure() && !allowInsecure {
					if explicit {
						errs = append(errs, fmt.Errorf("tlsconf: cipher %s is refused by policy: %s (set allow_insecure_ciphers to allow it)", s.openssl, s.whyInsecure()))
					}
					continue
				}
				if s.fipsRefuses() {
					if explicit {
						errs = append(errs, fmt.Errorf("tlsconf: cipher %s is %s", s.openssl, fipsNote()))
					}
					continue
				}
				selected = append(selected, id)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, ignored, err
	}
	if len(selected) == 0 {
		return nil, ignored, fmt.Errorf("tlsconf: cipher string %q selects no cipher suite that is both supported and allowed by policy (ECDHE with AES-GCM or ChaCha20-Poly1305)", spec)
	}
	return selected, ignored, nil
}

// ParseCipherSuiteNames translates TLS 1.2 cipher suite names in IANA form
// (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), as Moat YAML's cipher_suites
// lists them, into Go suite IDs under the same policy as
// ParseOpenSSLCiphers: a suite without forward secrecy or AEAD is refused,
// naming it and why, unless allowInsecure is true. TLS 1.3 names, unknown
// names and suites Go does not implement are errors, and so are suites
// FIPS 140-3 mode does not approve when the process runs in it. Every
// problem is returned at once.
func ParseCipherSuiteNames(names []string, allowInsecure bool) ([]uint16, error) {
	var ids []uint16
	var errs []error
	for _, name := range names {
		var s suiteInfo
		for _, c := range suites {
			if tls.CipherSuiteName(c.id) == name {
				s = c
			}
		}
		switch {
		case s.id == 0:
			errs = append(errs, fmt.Errorf("tlsconf: unknown cipher suite %q (use IANA names such as TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)", name))
		case s.tls13:
			errs = append(errs, fmt.Errorf("tlsconf: cipher suite %s is a TLS 1.3 suite, which Go does not let a server restrict", name))
		case !s.secure() && !allowInsecure:
			errs = append(errs, fmt.Errorf("tlsconf: cipher suite %s is refused by policy: %s (set allow_insecure_ciphers to allow it)", name, s.whyInsecure()))
		case s.fipsRefuses():
			errs = append(errs, fmt.Errorf("tlsconf: cipher suite %s is %s", name, fipsNote()))
		case !slices.Contains(ids, s.id):
			ids = append(ids, s.id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ids, nil
}

func suiteByID(id uint16) suiteInfo {
	for _, s := range suites {
		if s.id == id {
			return s
		}
	}
	return suiteInfo{}
}

// matchCipherToken resolves one element of a cipher string (without prefix).
func matchCipherToken(tok string) (ids []uint16, explicit bool, ignored []string, err error) {
	// A full cipher name.
	for _, s := range suites {
		if !s.tls13 && strings.EqualFold(s.openssl, tok) {
			return []uint16{s.id}, true, nil, nil
		}
	}
	up := strings.ToUpper(tok)
	if strings.HasPrefix(up, "TLS_") {
		if _, err := ParseTLS13Ciphers(tok); err == nil {
			return nil, false, []string{tok + ": TLS 1.3 suite, configure it with ciphers_tls1.3"}, nil
		}
		// IANA names of TLS 1.2 suites are accepted too.
		for _, s := range suites {
			if !s.tls13 && tls.CipherSuiteName(s.id) == up {
				return []uint16{s.id}, true, nil, nil
			}
		}
	}
	for _, p := range unsupportedPrefixes {
		if strings.HasPrefix(up, p) && strings.Count(up, "-") >= 1 {
			return nil, false, []string{tok + ": not implemented by Go's TLS stack"}, nil
		}
	}
	if strings.HasSuffix(up, "-CCM") || strings.HasSuffix(up, "-CCM8") {
		return nil, false, []string{tok + ": not implemented by Go's TLS stack"}, nil
	}
	// Aliases, possibly combined with '+'.
	parts := strings.Split(up, "+")
	var preds []func(suiteInfo) bool
	empty := false
	for _, p := range parts {
		if f, ok := aliases[p]; ok {
			preds = append(preds, f)
			continue
		}
		if slices.Contains(emptyAliases, p) {
			empty = true
			continue
		}
		return nil, false, nil, fmt.Errorf("tlsconf: unknown cipher or alias %q in cipher string", tok)
	}
	if empty {
		return nil, false, nil, nil
	}
	for _, s := range suites {
		if s.tls13 {
			continue
		}
		ok := true
		for _, f := range preds {
			ok = ok && f(s)
		}
		if ok {
			ids = append(ids, s.id)
		}
	}
	return ids, false, nil, nil
}

// ParseTLS13Ciphers translates mosquitto.conf's `ciphers_tls1.3` value
// (OpenSSL ciphersuites syntax: TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384)
// into Go suite IDs. Go cannot restrict the TLS 1.3 suites it negotiates, so
// a Manager enforces the list after negotiation: a TLS 1.3 handshake that
// settles on a suite outside the list is refused (see
// ListenerConfig.TLS13CipherSuites). Every TLS 1.3 suite is AEAD with forward
// secrecy, so none is refused by policy; in FIPS 140-3 mode
// TLS_CHACHA20_POLY1305_SHA256 is refused as not approved.
func ParseTLS13Ciphers(spec string) ([]uint16, error) {
	var ids []uint16
	var errs []error
	for _, tok := range strings.FieldsFunc(spec, func(r rune) bool { return r == ':' || r == ',' || r == ' ' }) {
		found := false
		for _, s := range suites {
			if s.tls13 && strings.EqualFold(tls.CipherSuiteName(s.id), tok) {
				if s.fipsRefuses() {
					errs = append(errs, fmt.Errorf("tlsconf: TLS 1.3 cipher suite %s is %s", tls.CipherSuiteName(s.id), fipsNote()))
				} else if !slices.Contains(ids, s.id) {
					ids = append(ids, s.id)
				}
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("tlsconf: unknown or unsupported TLS 1.3 cipher suite %q (Go implements TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256)", tok))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, errors.New("tlsconf: empty TLS 1.3 cipher suite list")
	}
	return ids, nil
}

// ParseTLSVersion translates mosquitto.conf's `tls_version` (the minimum
// protocol version) into a crypto/tls version: "tlsv1.2" and "tlsv1.3"
// (also "1.2", "TLS1.3", any case). Versions below TLS 1.2 are refused:
// NIST SP 800-52 Rev. 2 forbids them.
func ParseTLSVersion(s string) (uint16, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	v = strings.TrimPrefix(strings.TrimPrefix(v, "tls"), "v")
	switch v {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1", "1.0", "1.1":
		return 0, fmt.Errorf("tlsconf: tls_version %q is below the minimum TLS 1.2 (NIST SP 800-52 Rev. 2); use tlsv1.2 or tlsv1.3", s)
	default:
		return 0, fmt.Errorf("tlsconf: unknown tls_version %q (want tlsv1.2 or tlsv1.3)", s)
	}
}
