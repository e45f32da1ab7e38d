package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// profileConfigs are the configurations of the profile table, each
// written with "profile: %s" on line 1.
var profileConfigs = map[string]string{
	"plain-lan": `profile: %s
listeners:
  - address: 192.168.1.10:1883
    transport: tcp
    allow_anonymous: true
`,
	"plain-any": `profile: %s
auth:
  - {type: password_file, path: /etc/moat/passwd}
listeners:
  - address: ":1883"
    transport: tcp
`,
	"mtls-strict": `profile: %s
acl:
  rules:
    - {name: dev, effect: allow, subjects: {usernames: [d1]}, actions: [publish], topics: ["d/#"]}
listeners:
  - address: ":8883"
    tls:
      cert: s.pem
      key: s.key
      client_ca: ca.pem
      min_version: "1.3"
      crl: [crl.pem]
`,
	"tls-password": `profile: %s
listeners:
  - address: ":8883"
    tls:
      cert: s.pem
      key: s.key
      client_auth: none
      cipher_suites: [TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256]
    auth:
      - {type: password_file, path: /p}
`,
	"loose": `profile: %s
sessions:
  ignore_owner: true
listeners:
  - address: 127.0.0.1:1883
    transport: tcp
    allow_anonymous: true
  - address: ":8883"
    tls:
      allow_insecure_ciphers: true
      cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]
acl: {allow_all: true}
`,
}

// TestProfileViolations is the table of configurations × profiles: each
// violation as "line: fragment of the message", in line order. FIPS mode
// and the audit log are on here; TestProfileFacts covers them.
func TestProfileViolations(t *testing.T) {
	want := map[string]map[string][]string{
		"plain-lan": {
			ProfileSecureNetwork:   nil,
			ProfileSecureTransport: {"3: no way to authenticate", "4: only loopback addresses may have a plain listener", "5: anonymous access is refused"},
			ProfileIndustry:        {"4: every listener must be tls or wss", "5: anonymous access is refused"},
		},
		"plain-any": {
			ProfileSecureNetwork:   {"5: plain MQTT is allowed only on loopback or private addresses"},
			ProfileSecureTransport: {"6: only loopback addresses"},
			ProfileIndustry:        {"6: every listener must be tls or wss"},
		},
		"mtls-strict": {},
		"tls-password": {
			ProfileIndustry: {"4: not checked for revocation", "7: client certificates are required on every listener"},
		},
		"loose": {
			ProfileSecureTransport: {"3: sessions.ignore_owner", "5: no way to authenticate", "7: anonymous access is refused", "10: allow_insecure_ciphers is refused"},
			ProfileIndustry:        {"3: sessions.ignore_owner", "6: every listener must be tls or wss", "7: anonymous access is refused", "10: allow_insecure_ciphers is refused", "12: no access policy applies to listener(s) tcp-1883, tls-8883: acl.allow_all turns access control off"},
		},
	}
	facts := ProfileFacts{FIPS: true, AuditLog: true}
	for name, text := range profileConfigs {
		for _, prof := range Profiles {
			t.Run(name+"/"+prof, func(t *testing.T) {
				c, err := Parse("m.yaml", fmt.Appendf(nil, text, prof))
				if err != nil {
					t.Fatal(err)
				}
				got := violationLines(c, c.ProfileViolations(facts))
				exp := want[name][prof]
				if len(got) != len(exp) {
					t.Fatalf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(exp, "\n"))
				}
				for i := range exp {
					if !strings.HasPrefix(got[i], strings.SplitN(exp[i], ":", 2)[0]+":") || !strings.Contains(got[i], strings.SplitN(exp[i], ": ", 2)[1]) {
						t.Errorf("violation %d = %q, want %q", i, got[i], exp[i])
					}
					if !strings.Contains(got[i], "profile "+prof+": ") {
						t.Errorf("violation %q does not name the profile", got[i])
					}
				}
			})
		}
	}
}

// violationLines renders violations as "line: message", sorted by line.
func violationLines(c *Config, vs []Violation) []string {
	var out []string
	for _, v := range vs {
		_, line := splitPos(c.Pos(v.Path))
		out = append(out, fmt.Sprintf("%d: %s", line, v.Msg))
	}
	slices.SortStableFunc(out, func(a, b string) int {
		var x, y int
		fmt.Sscanf(a, "%d", &x)
		fmt.Sscanf(b, "%d", &y)
		return x - y
	})
	return out
}

// What the process contributes: FIPS mode and the audit log (industry),
// and policies that allow everything.
func TestProfileFacts(t *testing.T) {
	c, err := Parse("m.yaml", fmt.Appendf(nil, profileConfigs["tls-password"], ProfileIndustry))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(violationLines(c, c.ProfileViolations(ProfileFacts{OpenPolicies: []string{"m.yaml:2"}})), "\n")
	for _, w := range []string{"FIPS 140-3 mode is off", "the audit log is required", "TLS 1.2 with suites NIST SP 800-52r2 does not approve", "access policy m.yaml:2 lets any client publish"} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
	// NIST suites only, without FIPS mode: TLS 1.2 is accepted.
	c.Listeners[0].TLS.CipherSuites = []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}
	if got := violationLines(c, c.ProfileViolations(ProfileFacts{})); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "NIST") }) {
		t.Errorf("NIST suites refused: %q", got)
	}
}

// The zero configuration meets industry in FIPS mode except for the audit
// log, which moat serve does not write yet; without FIPS mode, FIPS and the
// TLS 1.2 suites are missing too.
func TestProfileZeroConfigIndustry(t *testing.T) {
	c := Default()
	c.Profile = ProfileIndustry
	got := violationLines(c, c.ProfileViolations(ProfileFacts{FIPS: true}))
	if len(got) != 1 || !strings.Contains(got[0], "audit log") {
		t.Errorf("FIPS on: %q, want the audit log only", got)
	}
	if got := c.ProfileViolations(ProfileFacts{FIPS: true, AuditLog: true}); len(got) != 0 {
		t.Errorf("with the audit log: %v", got)
	}
	if got := c.ProfileViolations(ProfileFacts{}); len(got) != 3 {
		t.Errorf("FIPS off: %v, want FIPS, audit log and TLS 1.2 suites", got)
	}
}

func TestProfileUnknown(t *testing.T) {
	_, err := Parse("m.yaml", []byte("profile: strict\n"))
	if err == nil || !strings.Contains(err.Error(), `m.yaml:1: profile "strict" must be one of open, secure-network`) {
		t.Errorf("err = %v", err)
	}
	c, err := Parse("m.yaml", []byte("profile: open\n"))
	if err != nil || len(c.ProfileViolations(ProfileFacts{})) != 0 || len(c.ProfileWarnings()) != 1 {
		t.Errorf("open: %v %v", err, c.ProfileWarnings())
	}
}

// secure-network admits anonymous clients, with a warning naming the
// listener.
func TestProfileSecureNetworkWarnsAnonymous(t *testing.T) {
	c, err := Parse("m.yaml", fmt.Appendf(nil, profileConfigs["plain-lan"], ProfileSecureNetwork))
	if err != nil {
		t.Fatal(err)
	}
	w := c.ProfileWarnings()
	if len(w) != 1 || !strings.Contains(w[0], `m.yaml:3: listener "tcp-1883" on 192.168.1.10:1883 admits anonymous clients`) {
		t.Errorf("warnings: %q", w)
	}
}
