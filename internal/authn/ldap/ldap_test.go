package ldap

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

func newBackend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func secretFile(t *testing.T, secret string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(f, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// templateConfig binds by DN template over LDAPS, without a service
// account: groups are searched as the user.
func templateConfig(d *directory) Config {
	return Config{
		URL:            d.ldapsURL,
		CAFile:         d.caFile,
		BindDNTemplate: dnTemplate,
		Group:          Group{Base: groupsBase},
	}
}

// searchConfig searches then binds over StartTLS with a service account.
func searchConfig(t *testing.T, d *directory) Config {
	return Config{
		URL:      d.ldapURL,
		StartTLS: true,
		CAFile:   d.caFile,
		Search: Search{
			Base:             peopleBase,
			Filter:           "(&(objectClass=inetOrgPerson)(uid=%u))",
			BindDN:           serviceDN,
			BindPasswordFile: secretFile(t, servicePW),
		},
		Group: Group{Base: groupsBase},
	}
}

func request(user, pw string) *authn.Request {
	return &authn.Request{Username: user, Password: authn.NewPassword([]byte(pw)), HasPassword: true}
}

func authenticate(t *testing.T, b *Backend, user, pw string) authn.Result {
	t.Helper()
	res, err := b.Authenticate(t.Context(), request(user, pw))
	if err != nil {
		t.Fatalf("authenticate %q: %v", user, err)
	}
	return res
}

type want struct {
	verdict authn.Verdict
	groups  []string
	reason  string // a substring
}

func check(t *testing.T, res authn.Result, w want) {
	t.Helper()
	if res.Verdict != w.verdict {
		t.Fatalf("verdict %v (%s), want %v", res.Verdict, res.Reason, w.verdict)
	}
	if !slices.Equal(res.Groups, w.groups) {
		t.Errorf("groups %q, want %q", res.Groups, w.groups)
	}
	if !strings.Contains(res.Reason, w.reason) {
		t.Errorf("reason %q, want it to contain %q", res.Reason, w.reason)
	}
}

func TestBind(t *testing.T) {
	d := startSlapd(t)
	both := []string{"operators", "viewers"}
	cases := []struct {
		user, pw string
		want     want
	}{
		{"alice", alicePW, want{authn.Allow, both, "bound as uid=alice," + peopleBase}},
		{"bob", bobPW, want{authn.Allow, []string{"viewers"}, "bound as uid=bob,"}},
		{"alice", "wrong", want{authn.Deny, nil, denyReason}},
		{"mallory", alicePW, want{authn.Deny, nil, denyReason}},
	}
	for _, mode := range []struct {
		name string
		cfg  Config
	}{
		{"template over LDAPS", templateConfig(d)},
		{"search then bind over StartTLS", searchConfig(t, d)},
	} {
		t.Run(mode.name, func(t *testing.T) {
			b := newBackend(t, mode.cfg)
			for _, c := range cases {
				res := authenticate(t, b, c.user, c.pw)
				check(t, res, c.want)
				if c.want.verdict == authn.Allow && res.Attributes["ldap_dn"] != "uid="+c.user+","+peopleBase {
					t.Errorf("%s: attributes %v", c.user, res.Attributes)
				}
			}
		})
	}
	// StartTLS was really negotiated (slapd logs the extended operation).
	if !strings.Contains(d.log(), "oid=1.3.6.1.4.1.1466.20037") {
		t.Error("no StartTLS operation in slapd's log")
	}
}

func TestGroupMapping(t *testing.T) {
	d := startSlapd(t)
	for _, tc := range []struct {
		name  string
		cfg   func() Config
		alice []string
	}{
		{"memberOf on the user entry, search mode", func() Config {
			c := searchConfig(t, d)
			c.Group = Group{UserAttribute: "memberOf"}
			return c
		}, []string{"operators"}}, // the overlay maintains memberOf for groupOfNames only
		{"memberOf on the user entry, template mode", func() Config {
			c := templateConfig(d)
			c.Group = Group{UserAttribute: "memberOf"}
			return c
		}, []string{"operators"}},
		{"group search as the service account", func() Config {
			c := templateConfig(d)
			c.Search = Search{BindDN: serviceDN, BindPasswordEnv: "MOAT_TEST_LDAP_PW"}
			return c
		}, []string{"operators", "viewers"}},
		{"custom filter and attribute", func() Config {
			c := searchConfig(t, d)
			c.Group = Group{Base: groupsBase, Filter: "(&(objectClass=groupOfUniqueNames)(uniqueMember=%d))", Attribute: "cn"}
			return c
		}, []string{"viewers"}},
		{"map renames and filters", func() Config {
			c := searchConfig(t, d)
			c.Group.Map = map[string]string{"operators": "valve-operators"}
			return c
		}, []string{"valve-operators"}},
		{"no groups configured", func() Config {
			c := searchConfig(t, d)
			c.Group = Group{}
			return c
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MOAT_TEST_LDAP_PW", servicePW)
			b := newBackend(t, tc.cfg())
			check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, tc.alice, "bound"})
		})
	}
}

// TestSecurityLDAPFilterInjection: the username is pasted into the search
// filter. Unescaped, "al*" matches alice, and "alice)(objectClass=*"
// closes the uid test and adds one that is always true: either way the
// attacker logs in with alice's password under a username of their
// choosing, which ACL patterns with %u then trust. "*" alone would match
// every user. RFC 4515 escaping makes each of them a literal uid that no
// entry has.
func TestSecurityLDAPFilterInjection(t *testing.T) {
	d := startSlapd(t)
	b := newBackend(t, searchConfig(t, d))
	for _, user := range []string{"al*", "alice)(objectClass=*", "*", "alice)(|(uid=*", `alice\2a`} {
		check(t, authenticate(t, b, user, alicePW), want{authn.Deny, nil, denyReason})
	}
	check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, []string{"operators", "viewers"}, "bound"})
}

// TestSecurityLDAPDNInjection: the username is pasted into the DN
// template. Unescaped, "dave,ou=contractors" makes
// uid=dave,ou=contractors,ou=people,... , an entry outside the people the
// template is meant for, and its password logs in under the username
// "dave,ou=contractors" (with a looser template, any entry below the base
// is reachable). RFC 4514 escaping keeps the comma inside the uid value.
func TestSecurityLDAPDNInjection(t *testing.T) {
	d := startSlapd(t)
	// The target entry exists and its password works when bound directly.
	c := d.admin(t)
	if err := c.Bind("uid=dave,ou=contractors,"+peopleBase, contractPW); err != nil {
		t.Fatalf("the contractor entry does not bind: %v", err)
	}
	b := newBackend(t, templateConfig(d))
	for _, user := range []string{"dave,ou=contractors", "dave+uid=x", `dave\,ou=contractors`, "#dave", " dave", "dave;ou=contractors", "dave"} {
		check(t, authenticate(t, b, user, contractPW), want{authn.Deny, nil, denyReason})
	}
}

// TestSecurityLDAPEmptyPassword: an LDAP simple bind with a DN and an
// empty password is an "unauthenticated bind" and many directories answer
// it with success (this one is configured with allow bind_anon_dn, as
// such directories are). A client sending a known username and an empty
// password would be admitted. The backend refuses before any bind is
// sent.
func TestSecurityLDAPEmptyPassword(t *testing.T) {
	d := startSlapd(t)
	c := d.admin(t)
	if _, err := c.SimpleBind(&goldap.SimpleBindRequest{Username: "uid=alice," + peopleBase, AllowEmptyPassword: true}); err != nil {
		t.Fatalf("the directory refuses unauthenticated binds, so this test shows nothing: %v", err)
	}
	for _, cfg := range []Config{searchConfig(t, d), templateConfig(d)} {
		b := newBackend(t, cfg)
		binds := d.count("BIND")
		check(t, authenticate(t, b, "alice", ""), want{authn.Deny, nil, "empty password"})
		if n := d.count("BIND"); n != binds {
			t.Errorf("%d binds sent for an empty password", n-binds)
		}
	}
}

// TestSecurityLDAPUserEnumeration: a client that can tell "no such user"
// from "wrong password" learns which usernames exist, from the reason or
// from the time the answer takes. Both get the same reason, and the
// directory sees the same operations: in search mode one search and one
// bind (an unknown user's password is bound against a DN that does not
// exist), in template mode one bind.
func TestSecurityLDAPUserEnumeration(t *testing.T) {
	d := startSlapd(t)
	for _, cfg := range []Config{searchConfig(t, d), templateConfig(d)} {
		b := newBackend(t, cfg)
		authenticate(t, b, "carol", carolPW) // warm the service pool
		// slapd logs an operation after it has answered it, so its log
		// lags the answers: wait until the counts stop moving (two polls
		// in a row agree) before and after each measured attempt.
		settle := func() {
			prev := -1
			testutil.WaitFor(t, "slapd's log to settle", 10*time.Second, func() bool {
				n := d.count("BIND") + d.count("SRCH")
				same := n == prev
				prev = n
				return same
			})
		}
		ops := func(user, pw string) (reason string, binds, searches int) {
			settle()
			b0, s0 := d.count("BIND"), d.count("SRCH")
			reason = authenticate(t, b, user, pw).Reason
			testutil.WaitFor(t, "slapd's log of the bind", 10*time.Second, func() bool { return d.count("BIND") > b0 })
			settle()
			return reason, d.count("BIND") - b0, d.count("SRCH") - s0
		}
		r1, b1, s1 := ops("nobody", "guess")
		r2, b2, s2 := ops("bob", "guess")
		if r1 != r2 || b1 != b2 || s1 != s2 {
			t.Errorf("unknown user: %q, %d binds, %d searches; wrong password: %q, %d binds, %d searches", r1, b1, s1, r2, b2, s2)
		}
		if b1 != 1 {
			t.Errorf("%d binds for an unknown user, want 1", b1)
		}
	}
}

func TestNotMine(t *testing.T) {
	d := startSlapd(t)
	b := newBackend(t, templateConfig(d))
	for _, req := range []*authn.Request{
		{Username: "", Password: authn.NewPassword([]byte("x")), HasPassword: true},
		{Username: "alice"}, // a certificate client that sets a username
	} {
		res, err := b.Authenticate(t.Context(), req)
		if err != nil || res.Verdict != authn.NotMine {
			t.Errorf("%+v: %v %v", req, res, err)
		}
	}
	long := strings.Repeat("a", maxUsername+1)
	for _, user := range []string{long, "al\x00ice", "al\nice", "\xff"} {
		check(t, authenticate(t, b, user, alicePW), want{authn.Deny, nil, "username not acceptable"})
	}
	check(t, authenticate(t, b, "alice", strings.Repeat("p", maxPassword+1)), want{authn.Deny, nil, "password longer"})
}

// TestDirectoryDown: with the directory gone, every answer is an error
// wrapping authn.ErrUnavailable, so that the chain refuses the client as
// "server unavailable" and never asks the next backend (fail closed).
func TestDirectoryDown(t *testing.T) {
	d := startSlapd(t)
	search := newBackend(t, searchConfig(t, d))
	template := newBackend(t, templateConfig(d))
	for _, b := range []*Backend{search, template} {
		check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, []string{"operators", "viewers"}, "bound"})
	}
	d.stop()
	for _, b := range []*Backend{search, template} {
		res, err := b.Authenticate(t.Context(), request("alice", alicePW))
		if !errors.Is(err, authn.ErrUnavailable) || res.Verdict == authn.Allow {
			t.Errorf("directory down: %v, %v", res, err)
		}
		chain := authn.Chain{Backends: []authn.Backend{b, allowAll{}}}
		res, err = chain.Authenticate(t.Context(), request("alice", alicePW))
		if !errors.Is(err, authn.ErrUnavailable) || res.Verdict != authn.Deny {
			t.Errorf("chain: %v, %v", res, err)
		}
	}
	if _, _, err := search.Recheck(t.Context(), "alice"); !errors.Is(err, authn.ErrUnavailable) {
		t.Errorf("recheck: %v", err)
	}
}

// TestDirectoryRestart: pooled service connections die with the
// directory; once it is back, the first request replaces them without
// failing.
func TestDirectoryRestart(t *testing.T) {
	d := startSlapd(t)
	b := newBackend(t, searchConfig(t, d))
	check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, []string{"operators", "viewers"}, "bound"})
	d.restart(t)
	check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, []string{"operators", "viewers"}, "bound"})
	if _, ok, err := b.Recheck(t.Context(), "bob"); !ok || err != nil {
		t.Errorf("recheck after restart: %v %v", ok, err)
	}
}

type allowAll struct{}

func (allowAll) Name() string { return "allow-all" }
func (allowAll) Authenticate(context.Context, *authn.Request) (authn.Result, error) {
	return authn.Result{Verdict: authn.Allow}, nil
}

// TestTimeouts: a directory that accepts connections and never answers
// costs at most Timeout, or less when the caller's context ends first.
func TestTimeouts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	ca := testpki.NewRoot(t, "silent server CA", testpki.P256)
	for _, tc := range []struct {
		name    string
		cfg     Config
		ctxWait time.Duration
	}{
		{"ldaps, timeout", Config{URL: "ldaps://" + l.Addr().String(), RootCAs: ca.Pool(), Timeout: 200 * time.Millisecond}, time.Minute},
		{"starttls, timeout", Config{URL: "ldap://" + l.Addr().String(), StartTLS: true, RootCAs: ca.Pool(), Timeout: 200 * time.Millisecond}, time.Minute},
		{"plaintext bind, context", Config{URL: "ldap://" + l.Addr().String(), InsecurePlaintext: true, Timeout: time.Minute, Logger: discard()}, 200 * time.Millisecond},
		{"search, context", Config{URL: "ldap://" + l.Addr().String(), InsecurePlaintext: true, Timeout: time.Minute, Logger: discard(),
			Search: Search{Base: peopleBase, BindDN: serviceDN, BindPasswordEnv: "MOAT_TEST_LDAP_PW"}}, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MOAT_TEST_LDAP_PW", servicePW)
			if tc.cfg.Search.Base == "" {
				tc.cfg.BindDNTemplate = dnTemplate
			}
			b := newBackend(t, tc.cfg)
			ctx, cancel := context.WithTimeout(t.Context(), tc.ctxWait)
			defer cancel()
			start := time.Now()
			_, err := b.Authenticate(ctx, request("alice", alicePW))
			if !errors.Is(err, authn.ErrUnavailable) {
				t.Fatalf("hung directory: %v", err)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("took %v", el)
			}
		})
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestSecurityLDAPUntrustedCertificate: a directory whose certificate
// does not chain to the configured CA (an impostor on the network path)
// never sees a password: LDAPS and StartTLS both fail closed.
func TestSecurityLDAPUntrustedCertificate(t *testing.T) {
	d := startSlapd(t)
	other := testpki.NewRoot(t, "other CA", testpki.P256).WritePEM(t, filepath.Join(t.TempDir(), "ca.pem"))
	for _, cfg := range []Config{templateConfig(d), searchConfig(t, d)} {
		cfg.CAFile = other
		b := newBackend(t, cfg)
		binds := d.count("BIND")
		res, err := b.Authenticate(t.Context(), request("alice", alicePW))
		if !errors.Is(err, authn.ErrUnavailable) || res.Verdict == authn.Allow {
			t.Errorf("untrusted directory: %v, %v", res, err)
		}
		if n := d.count("BIND"); n != binds {
			t.Errorf("%d binds sent to an untrusted directory", n-binds)
		}
	}
	// The wrong name in the certificate fails too.
	cfg := templateConfig(d)
	cfg.ServerName = "ldap.example.org"
	b := newBackend(t, cfg)
	if _, err := b.Authenticate(t.Context(), request("alice", alicePW)); !errors.Is(err, authn.ErrUnavailable) {
		t.Errorf("wrong server name: %v", err)
	}
}

func TestInsecurePlaintext(t *testing.T) {
	d := startSlapd(t)
	var logs bytes.Buffer
	cfg := templateConfig(d)
	cfg.URL, cfg.CAFile, cfg.InsecurePlaintext = d.ldapURL, "", true
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	b := newBackend(t, cfg)
	if !strings.Contains(logs.String(), "plaintext") {
		t.Errorf("no warning logged: %q", logs.String())
	}
	check(t, authenticate(t, b, "alice", alicePW), want{authn.Allow, []string{"operators", "viewers"}, "bound"})
}

// TestRecheck: the service account sees group changes and deleted users,
// for sessions already connected.
func TestRecheck(t *testing.T) {
	d := startSlapd(t)
	search := newBackend(t, searchConfig(t, d))
	cfg := templateConfig(d)
	cfg.Search = Search{BindDN: serviceDN, BindPasswordFile: secretFile(t, servicePW)}
	cfg.Group.UserAttribute = "memberOf"
	template := newBackend(t, cfg)

	recheck := func(b *Backend, user string, groups []string, exists bool) {
		t.Helper()
		g, ok, err := b.Recheck(t.Context(), user)
		if err != nil || ok != exists || !slices.Equal(g, groups) {
			t.Errorf("recheck %s: %q %v %v, want %q %v", user, g, ok, err, groups, exists)
		}
	}
	recheck(search, "alice", []string{"operators", "viewers"}, true)
	recheck(template, "alice", []string{"operators", "viewers"}, true)
	recheck(search, "carol", []string{"operators"}, true)
	recheck(template, "carol", []string{"operators"}, true)

	d.removeMember(t, "operators", "uid=alice,"+peopleBase)
	recheck(search, "alice", []string{"viewers"}, true)
	recheck(template, "alice", []string{"viewers"}, true)

	d.deleteEntry(t, "uid=carol,"+peopleBase)
	recheck(search, "carol", nil, false)
	recheck(template, "carol", nil, false)
	recheck(search, "*", nil, false)
	recheck(template, "carol,ou=people", nil, false)

	noService := newBackend(t, templateConfig(d))
	if _, _, err := noService.Recheck(t.Context(), "alice"); err == nil || !strings.Contains(err.Error(), "service account") {
		t.Errorf("recheck without a service account: %v", err)
	}
}

// TestConcurrent runs many authentications at once over a small pool,
// and checks that no goroutine outlives Close.
func TestConcurrent(t *testing.T) {
	d := startSlapd(t)
	cfg := searchConfig(t, d)
	cfg.PoolSize, cfg.MaxBinds = 2, 3
	base := runtime.NumGoroutine()
	b := newBackend(t, cfg)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			user, pw, v := "alice", alicePW, authn.Allow
			if i%3 == 0 {
				pw, v = "wrong", authn.Deny
			}
			res, err := b.Authenticate(t.Context(), request(user, pw))
			if err != nil || res.Verdict != v {
				t.Errorf("%d: %v %v", i, res, err)
			}
		})
	}
	wg.Wait()
	if n := len(b.pool.idle); n > 2 {
		t.Errorf("%d idle service connections, pool size 2", n)
	}
	b.Close()
	testutil.WaitFor(t, "the connections' goroutines to end", 10*time.Second, func() bool { return runtime.NumGoroutine() <= base })
	if _, err := b.Authenticate(t.Context(), request("alice", alicePW)); !errors.Is(err, authn.ErrUnavailable) {
		t.Errorf("after Close: %v", err)
	}
	tb := newBackend(t, templateConfig(d))
	tb.Close()
	if _, err := tb.Authenticate(t.Context(), request("alice", alicePW)); !errors.Is(err, authn.ErrUnavailable) {
		t.Errorf("template backend after Close: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	empty := secretFile(t, "")
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"nothing", Config{}, []string{"url is required", "bind_dn_template"}},
		{"plaintext", Config{URL: "ldap://dir", BindDNTemplate: dnTemplate}, []string{"plaintext"}},
		{"ldaps and starttls", Config{URL: "ldaps://dir", StartTLS: true, BindDNTemplate: dnTemplate}, []string{"already TLS"}},
		{"insecure with ldaps", Config{URL: "ldaps://dir", InsecurePlaintext: true, BindDNTemplate: dnTemplate}, []string{"insecure_plaintext contradicts"}},
		{"scheme", Config{URL: "http://dir", BindDNTemplate: dnTemplate}, []string{"scheme"}},
		{"url with dn", Config{URL: "ldaps://dir/dc=x?uid", BindDNTemplate: dnTemplate}, []string{"not used"}},
		{"both modes", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, Search: Search{Base: peopleBase, BindDN: serviceDN, BindPasswordEnv: "X"}}, []string{"not both"}},
		{"template without %u", Config{URL: "ldaps://dir", BindDNTemplate: "uid=alice," + peopleBase}, []string{"no %u"}},
		{"bad template", Config{URL: "ldaps://dir", BindDNTemplate: "uid%u"}, []string{"not a DN"}},
		{"search without service", Config{URL: "ldaps://dir", Search: Search{Base: peopleBase}}, []string{"needs search.bind_dn"}},
		{"bad filter", Config{URL: "ldaps://dir", Search: Search{Base: peopleBase, Filter: "(uid=%u", BindDN: serviceDN, BindPasswordFile: secretFile(t, "x")}}, []string{"search.filter"}},
		{"empty service password", Config{URL: "ldaps://dir", Search: Search{Base: peopleBase, BindDN: serviceDN, BindPasswordFile: empty}}, []string{"needs a password"}},
		{"missing password file", Config{URL: "ldaps://dir", Search: Search{Base: peopleBase, BindDN: serviceDN, BindPasswordFile: "/nonexistent/pw"}}, []string{"bind_password_file"}},
		{"missing ca file", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, CAFile: "/nonexistent/ca.pem"}, []string{"ca_file"}},
		{"ca file without PEM", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, CAFile: empty}, []string{"no PEM"}},
		{"group filter without base", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, Group: Group{Filter: "(member=%d)"}}, []string{"need group.base"}},
		{"bad group filter", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, Group: Group{Base: groupsBase, Filter: "member=%d)"}}, []string{"group.filter"}},
		{"negative", Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, Timeout: -1, PoolSize: -1}, []string{"negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "ldap: ") {
				t.Errorf("error %q does not start with the package name", err)
			}
		})
	}
	// The caller's map is copied, not kept.
	m := map[string]string{"a": "b"}
	b, err := New(Config{URL: "ldaps://dir", BindDNTemplate: dnTemplate, Group: Group{Base: groupsBase, Map: m}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m["c"] = "d"
	if len(b.group.Map) != 1 {
		t.Error("the group map is shared with the caller")
	}
}
