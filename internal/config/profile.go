package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Security profiles (Config.Profile; docs/profiles.md). Each is a set of
// hard requirements on top of the ones before it: open has none,
// secure-network bounds plain listeners to loopback and private addresses,
// secure-transport refuses plain listeners off loopback and anonymous
// access, industry also requires client certificates everywhere, approved
// TLS, FIPS mode, the audit log, an access policy and revocation checks.
const (
	ProfileOpen            = "open"
	ProfileSecureNetwork   = "secure-network"
	ProfileSecureTransport = "secure-transport"
	ProfileIndustry        = "industry"
)

// Profiles lists the profile names, weakest first.
var Profiles = []string{ProfileOpen, ProfileSecureNetwork, ProfileSecureTransport, ProfileIndustry}

// profileLevel orders the profiles: 0 for none and open, 3 for industry.
func profileLevel(name string) int {
	return max(slices.Index(Profiles, name), 0)
}

// ProfileFacts is what a profile check needs beyond the file. The start-up
// plan fills it in.
type ProfileFacts struct {
	// FIPS is whether the process runs in FIPS 140-3 mode
	// (crypto/fips140.Enabled).
	FIPS bool
	// AuditLog is whether the broker writes the audit log.
	AuditLog bool
	// OpenPolicies names the access policies that let any authenticated
	// client publish to any topic (the plan asks each compiled policy).
	OpenPolicies []string
}

// Violation is one requirement of the profile that a configuration does
// not meet.
type Violation struct {
	// Path is the setting concerned ("listeners[0].transport", "profile"),
	// for Config.Pos.
	Path string
	// Msg says what is wrong and what to do; it starts with the profile's
	// name.
	Msg string
}

// ProfileNISTSuites are the TLS 1.2 cipher suites NIST SP 800-52r2 approves
// that Moat's policy offers (ECDHE key exchange with AES-GCM); industry
// accepts TLS 1.2 only with these. FIPS mode narrows TLS 1.2 to them.
var ProfileNISTSuites = []string{
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
}

// ProfileViolations lists every requirement of c.Profile that c does not
// meet, in file order of the listeners and then the global ones. It
// returns nil without a profile or with open.
func (c *Config) ProfileViolations(f ProfileFacts) []Violation {
	name, level := c.Profile, profileLevel(c.Profile)
	if level == 0 {
		return nil
	}
	var out []Violation
	add := func(path, format string, args ...any) {
		out = append(out, Violation{Path: path, Msg: "profile " + name + ": " + fmt.Sprintf(format, args...)})
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		at := func(key string) string { return fmt.Sprintf("listeners[%d].%s", i, key) }
		ln := fmt.Sprintf("listener %q", l.Name)
		plain := !l.Transport.Secure()
		switch {
		case plain && level == 1 && !privateAddr(l.Address):
			add(at("address"), "%s: plain %s is allowed only on loopback or private addresses (%s); %s is not one: use transport tls, or bind to such an address",
				ln, transportWord(l.Transport), strings.Join(privateRanges, ", "), l.Address)
		case plain && level == 2 && !loopback(l.Address):
			add(at("transport"), "%s: plain %s on %s: only loopback addresses may have a plain listener; use transport tls or wss", ln, transportWord(l.Transport), l.Address)
		case plain && level == 3:
			add(at("transport"), "%s: plain %s: every listener must be tls or wss with client certificates, loopback ones too", ln, transportWord(l.Transport))
		}
		if level < 2 {
			continue
		}
		if l.AllowAnonymous {
			add(at("allow_anonymous"), "%s: anonymous access is refused by this profile; remove allow_anonymous", ln)
		}
		t := l.TLS
		if (t == nil || t.ClientAuth == ClientAuthNone) && len(c.listenerAuth(i)) == 0 && l.ProxyProtocol.UsernameFrom == "" && level == 2 {
			add(at("auth"), "%s: no way to authenticate: require client certificates (tls.client_auth) or give an auth list (password_file, ldap, jwt, introspection)", ln)
		}
		if t == nil {
			continue
		}
		if t.AllowInsecureCiphers {
			add(at("tls.allow_insecure_ciphers"), "%s: allow_insecure_ciphers is refused by this profile", ln)
		}
		if level < 3 {
			continue
		}
		if t.ClientAuth != ClientAuthRequired {
			add(at("tls.client_auth"), "%s: client certificates are required on every listener (tls.client_auth: required)", ln)
		}
		if t.MinVersion != "1.3" && !f.FIPS && !nistSuitesOnly(t) {
			add(at("tls.min_version"), "%s: TLS 1.2 with suites NIST SP 800-52r2 does not approve: set min_version \"1.3\", list only %s in cipher_suites, or run in FIPS mode (which narrows TLS 1.2 to them)",
				ln, strings.Join(ProfileNISTSuites, ", "))
		}
		if len(t.CRL) == 0 && t.OCSP.Mode == "off" && !builtinClientCA(t) {
			add(at("tls.crl"), "%s: client certificates are not checked for revocation: give tls.crl or tls.ocsp.mode (the built-in CA's CRL counts)", ln)
		}
	}
	if level >= 2 && c.Sessions.IgnoreOwner {
		add("sessions.ignore_owner", "sessions.ignore_owner lets any client take over another's session; remove it")
	}
	if level < 3 {
		return out
	}
	if !f.FIPS {
		add("profile", "FIPS 140-3 mode is off: run with GODEBUG=fips140=on or the make build-fips binary (docs/fips.md)")
	}
	if !f.AuditLog {
		add("audit.disabled", "the audit log is required: remove audit.disabled")
	}
	var open []string
	for i := range c.Listeners {
		if c.OpenACL(i) {
			open = append(open, c.Listeners[i].Name)
		}
	}
	switch {
	case len(open) == 0:
	case c.ACL != nil && c.ACL.AllowAll:
		add("acl.allow_all", "no access policy applies to listener(s) %s: acl.allow_all turns access control off; write rules instead (docs/access-control.md)", strings.Join(open, ", "))
	default:
		add("profile", "no access policy applies to listener(s) %s: add an acl_file (docs/access-control.md)", strings.Join(open, ", "))
	}
	for _, p := range f.OpenPolicies {
		add("acl", "the access policy %s lets any client publish to any topic; restrict it", p)
	}
	return out
}

// ProfileWarnings lists what the profile allows but wants the operator to
// hear about at every start, besides Warnings.
func (c *Config) ProfileWarnings() []string {
	var w []string
	switch c.Profile {
	case ProfileOpen:
		w = append(w, "profile open: no requirement is enforced; every other warning is yours to accept")
	case ProfileSecureNetwork:
		for i := range c.Listeners {
			if l := &c.Listeners[i]; l.AllowAnonymous {
				w = append(w, fmt.Sprintf("profile secure-network: %s on %s admits anonymous clients (secure-transport would refuse them)", l.where(), l.Address))
			}
		}
	}
	return w
}

// listenerAuth is listener i's authentication chain as configured.
func (c *Config) listenerAuth(i int) []AuthBackend {
	if c.IsSet(fmt.Sprintf("listeners[%d].auth", i)) || c.Listeners[i].Auth != nil {
		return c.Listeners[i].Auth
	}
	return c.Auth
}

// builtinClientCA reports whether a TLS policy verifies client
// certificates against the built-in CA, whose CRL the broker always
// checks.
func builtinClientCA(t *TLS) bool {
	return t.ClientAuth != ClientAuthNone && t.ClientCA == "" && t.ClientCADir == ""
}

// nistSuitesOnly reports whether YAML cipher_suites names only
// ProfileNISTSuites.
func nistSuitesOnly(t *TLS) bool {
	if t.Ciphers != "" || len(t.CipherSuites) == 0 {
		return false
	}
	for _, s := range t.CipherSuites {
		if !slices.Contains(ProfileNISTSuites, s) {
			return false
		}
	}
	return true
}

// privateRanges are the addresses secure-network accepts plain listeners
// on: loopback, RFC 1918 and RFC 4193 unique local addresses.
var privateRanges = []string{"127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "localhost"}

// privateAddr reports whether a listener address is loopback or private.
// An empty host (every interface) and host names other than localhost are
// not.
func privateAddr(addr string) bool {
	if loopback(addr) {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsPrivate()
}
