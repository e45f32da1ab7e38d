package config

import (
	"strings"
	"testing"
)

// password_file and acl_file keep Mosquitto 2.0's scopes: global without
// per_listener_settings, per listener (or for the default listener when
// given before any listener line) with it.
func TestMosquittoPasswordAndACLFiles(t *testing.T) {
	t.Run("global", func(t *testing.T) {
		c, err := Parse("m.conf", []byte("listener 1883\npassword_file /etc/pw\nacl_file /etc/acl\nlistener 1884\n"))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Auth) != 1 || c.Auth[0].Type != AuthPasswordFile || c.Auth[0].Path != "/etc/pw" {
			t.Errorf("Auth = %+v", c.Auth)
		}
		if c.ACL == nil || c.ACL.File != "/etc/acl" {
			t.Errorf("ACL = %+v", c.ACL)
		}
		if got := c.Pos("auth[0].path"); got != "m.conf:2" {
			t.Errorf("Pos(auth[0].path) = %q", got)
		}
		if got := c.Pos("acl.acl_file"); got != "m.conf:3" {
			t.Errorf("Pos(acl.acl_file) = %q", got)
		}
		for i, l := range c.Listeners {
			if l.Auth != nil || l.ACLFile != "" || c.IsSet("listeners["+string(rune('0'+i))+"].auth") {
				t.Errorf("listener %d has its own auth %+v / %q", i, l.Auth, l.ACLFile)
			}
		}
	})
	t.Run("per listener", func(t *testing.T) {
		c, err := Parse("m.conf", []byte("per_listener_settings true\nlistener 1883\npassword_file /a\nacl_file /acl-a\nlistener 1884\nallow_anonymous true\n"))
		if err != nil {
			t.Fatal(err)
		}
		if c.Auth != nil || c.ACL != nil {
			t.Errorf("global auth %+v acl %+v", c.Auth, c.ACL)
		}
		a, b := c.Listeners[0], c.Listeners[1]
		if len(a.Auth) != 1 || a.Auth[0].Path != "/a" || a.ACLFile != "/acl-a" || a.AllowAnonymous {
			t.Errorf("listener 0: %+v %q anon %v", a.Auth, a.ACLFile, a.AllowAnonymous)
		}
		if len(b.Auth) != 0 || b.ACLFile != "" || !b.AllowAnonymous {
			t.Errorf("listener 1: %+v %q anon %v", b.Auth, b.ACLFile, b.AllowAnonymous)
		}
		if got := c.Pos("listeners[0].acl_file"); got != "m.conf:4" {
			t.Errorf("Pos = %q", got)
		}
	})
	t.Run("duplicate", func(t *testing.T) {
		_, err := Parse("m.conf", []byte("listener 1883\npassword_file /a\npassword_file /b\n"))
		if err == nil || !strings.Contains(err.Error(), "m.conf:3: duplicate password_file") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("plugin hint", func(t *testing.T) {
		_, err := Parse("m.conf", []byte("listener 1883\nplugin /usr/lib/mosquitto_dynamic_security.so\n"))
		if err == nil || !strings.Contains(err.Error(), "an auth list of backends") {
			t.Errorf("got %v", err)
		}
	})
}

// The YAML auth lists and acl section: types checked at load, the rest of
// each entry decoded strictly by the plan.
func TestYAMLAuthAndACL(t *testing.T) {
	src := `auth:
  - {type: password_file, path: /etc/pw}
acl:
  acl_file: /etc/acl
  rules:
    - {effect: allow, subjects: {all: true}, actions: [read], topics: ["#"]}
listeners:
  - address: ":8883"
    auth:
      - type: ldap
        url: ldaps://ldap.example.org
        bind_dn_template: uid=%u,dc=x
`
	c, err := Parse("m.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Auth) != 1 || c.Auth[0].Path != "/etc/pw" || c.ACL == nil || c.ACL.File != "/etc/acl" {
		t.Fatalf("auth %+v acl %+v", c.Auth, c.ACL)
	}
	if l := c.Listeners[0]; len(l.Auth) != 1 || l.Auth[0].Type != AuthLDAP || !c.IsSet("listeners[0].auth") {
		t.Fatalf("listener auth %+v", l.Auth)
	}
	var ldap struct {
		Type           string `yaml:"type"`
		URL            string `yaml:"url"`
		BindDNTemplate string `yaml:"bind_dn_template"`
	}
	if err := c.Listeners[0].Auth[0].Decode(&ldap); err != nil || ldap.URL != "ldaps://ldap.example.org" {
		t.Fatalf("Decode: %v %+v", err, ldap)
	}
	var narrow struct {
		Type string `yaml:"type"`
	}
	if err := c.Listeners[0].Auth[0].Decode(&narrow); err == nil || !strings.Contains(err.Error(), `unknown key "url"`) {
		t.Errorf("strict Decode: %v", err)
	}

	for _, tc := range []struct{ src, want string }{
		{"auth:\n  - {path: /x}\n", "m.yaml:2: auth[0]: type is required"},
		{"auth:\n  - {type: passwd, path: /x}\n", "m.yaml:2: auth[0].type: unknown backend \"passwd\""},
		{"auth:\n  - type: password_file\n", "m.yaml:2: auth[0]: a password_file backend needs path"},
		{"auth: [x]\n", "an auth entry must be a mapping"},
		{"acl: [x]\n", "acl must be a mapping"},
	} {
		_, err := Parse("m.yaml", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.src, err, tc.want)
		}
	}
}

// Which listeners have no access policy: a mosquitto.conf without an
// acl_file for them (Mosquitto's meaning), or YAML with acl.allow_all.
// YAML without an acl section gets the default policy, so it is not open.
func TestOpenACL(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		open      []bool
	}{
		{"m.conf", "listener 1883\n", []bool{true}},
		{"m.conf", "listener 1883\nacl_file /acl\n", []bool{false}},
		{"m.conf", "per_listener_settings true\nlistener 1883\nacl_file /acl\nlistener 1884\n", []bool{false, true}},
		{"m.yaml", "listeners:\n  - {address: \":1883\", transport: tcp}\n", []bool{false}},
		{"m.yaml", "acl: {allow_all: true}\nlisteners:\n  - {address: \":1883\", transport: tcp}\n", []bool{true}},
		{"m.yaml", "acl: {allow_all: false, acl_file: /acl}\nlisteners:\n  - {address: \":1883\", transport: tcp}\n", []bool{false}},
	} {
		c, err := Parse(tc.name, []byte(tc.src))
		if err != nil {
			t.Fatalf("%q: %v", tc.src, err)
		}
		for i, want := range tc.open {
			if got := c.OpenACL(i); got != want {
				t.Errorf("%q: OpenACL(%d) = %v, want %v", tc.src, i, got, want)
			}
		}
	}
	if _, err := Parse("m.yaml", []byte("acl: {allow_all: yes please}\n")); err == nil || !strings.Contains(err.Error(), "acl.allow_all must be true or false") {
		t.Errorf("allow_all with a bad value: %v", err)
	}
}
