package authz

import (
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func mustACL(t testing.TB, text string) *Policy {
	t.Helper()
	a, err := ParseACLFile("acl", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{ACL: a})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type decideCase struct {
	user, client string
	action       Action
	topic        string
	want         bool
	rule         string // when set, the Decision.Rule expected
}

func runCases(t *testing.T, p *Policy, cases []decideCase) {
	t.Helper()
	for _, c := range cases {
		s := &Subject{Username: c.user, Anonymous: c.user == "", ClientID: c.client}
		d := p.Decide(Request{Subject: s, Action: c.action, Topic: c.topic})
		if d.Allow != c.want || (c.rule != "" && d.Rule != c.rule) {
			t.Errorf("%q/%q %s %q = %v by %q (%s); want %v by %q", c.user, c.client, c.action, c.topic, d.Allow, d.Rule, d.Reason, c.want, c.rule)
		}
		if d.Reason == "" || d.Rule == "" {
			t.Errorf("%q/%q %s %q: decision without reason or rule: %+v", c.user, c.client, c.action, c.topic, d)
		}
	}
}

func TestACLFileParse(t *testing.T) {
	good := "# comment\n\n   \ntopic read a\r\ntopic   write   b/+  \nuser  alice smith \ntopic c\ntopic read\npattern deny x/%u\ntopic read $SYS/#\n"
	a, err := ParseACLFile("f", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if a.anon == nil || len(a.anon.lines) != 2 {
		t.Fatalf("anonymous section: %+v", a.anon)
	}
	l := a.users["alice smith"]
	if l == nil || len(l.lines) != 3 {
		t.Fatalf("user \"alice smith\": %+v", l)
	}
	if got := l.lines[1].p.src; got != "read" || l.lines[1].access != accessRead|accessWrite {
		t.Errorf("\"topic read\" = topic %q access %d; Mosquitto reads it as readwrite on topic \"read\"", got, l.lines[1].access)
	}
	if len(a.patterns.lines) != 1 || a.patterns.lines[0].access != accessNone {
		t.Errorf("patterns: %+v", a.patterns.lines)
	}
	if l.lines[0].rule != "f:7" {
		t.Errorf("rule label %q, want f:7", l.lines[0].rule)
	}
}

func TestACLFileParseErrors(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"topic bogus a\n", "f:1: invalid access \"bogus\""},
		{"\n\nuser\n", "f:3: user line without a username"},
		{"topic\n", "f:1: topic line without a topic"},
		{"topic read a/#/b\n", "f:1: invalid topic"},
		{"  # indented comment\n", "f:1: invalid line"},
		{"topic\tread a\n", "f:1: invalid line"},
		{"TOPIC read a\n", "f:1: invalid line"},
		{"topic read a\x00b\n", "f:1: line contains a NUL byte"},
		{"topic read " + strings.Repeat("a", maxACLLine) + "\n", "f:1: line longer than"},
	} {
		_, err := ParseACLFile("f", strings.NewReader(c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "authz: ") {
			t.Errorf("ParseACLFile(%q) = %v, want an error containing %q", clip(c.text), err, c.want)
		}
	}
}

// TestACLFileParseLikeMosquitto starts Debian's mosquitto with each file and
// checks that it accepts exactly the files ParseACLFile accepts.
func TestACLFileParseLikeMosquitto(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto")
	}
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("mosquitto not installed")
	}
	for _, text := range []string{
		"topic read a\n",
		"  # indented comment\n",
		"topic\tread a\n",
		"\ttopic read a\n",
		"topic bogus a\n",
		"user\n",
		"topic read a/#/b\n",
		"topic read\n",
		"topic read a b\n",
		"pattern deny %u\n",
		"topic read +/+/#\r\n",
		"topic   read   a  \n",
		"TOPIC read a\n",
		"user alice\ntopic a+\n",
	} {
		_, perr := ParseACLFile("f", strings.NewReader(text))
		dir := t.TempDir()
		path := filepath.Join(dir, "acl")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		started := mosquittoAccepts(t, dir, path)
		if started != (perr == nil) {
			t.Errorf("acl_file %q: mosquitto starts=%v, ParseACLFile error %v", text, started, perr)
		}
	}
}

// mosquittoAccepts reports whether mosquitto starts with the acl_file
// (2.0.11 has no -t: an invalid file makes it exit at start). It listens
// on a unix socket in dir, so no port is involved.
func mosquittoAccepts(t *testing.T, dir, aclPath string) bool {
	t.Helper()
	conf := filepath.Join(dir, "check.conf")
	text := "listener 0 " + filepath.Join(dir, "sock") + "\nacl_file " + aclPath + "\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	m := runMosquitto(t, conf)
	m.stop()
	return m.running
}

func TestACLFileSemantics(t *testing.T) {
	p := mustACL(t, interopACL+"user sys\ntopic read $SYS/#\ntopic readwrite $SYS/#\ntopic readwrite $moat/#\n")
	runCases(t, p, []decideCase{
		// Anonymous section.
		{"", "a1", Receive, "public/x", true, "acl:2"},
		{"", "a1", Receive, "public/secret/y", false, "acl:3"},
		{"", "a1", Publish, "public/x", false, "default"},
		// A user's deny wins over the user's grants, whatever the order.
		{"alice", "x", Receive, "alice/private", false, "acl:10"},
		{"alice", "x", Publish, "alice/private", false, "acl:10"},
		{"alice", "x", Receive, "alice/private/z", true, "acl:7"},
		{"alice", "x", Publish, "cmd/alice", true, "acl:9"},
		{"alice", "x", Receive, "cmd/alice", false, "default"},
		// Patterns after the user's lines; pattern denies first among patterns.
		{"alice", "x", Publish, "devices/alice/t", true, "acl:27"},
		{"alice", "x", Publish, "devices/alice/locked", false, "acl:29"},
		{"bob", "x", Publish, "devices/alice/t", false, "default"},
		// A user line grant wins over a pattern deny.
		{"root", "x", Publish, "devices/root/locked", true, "acl:25"},
		// A user deny stops before the patterns.
		{"bob", "x", Receive, "alice/inbox", false, "acl:15"},
		{"bob", "x", Receive, "bob/inbox", true, "acl:14"},
		// %c patterns.
		{"carol", "c1", Receive, "clients/c1/x", true, "acl:28"},
		{"", "c1", Receive, "clients/c1/x", true, "acl:28"},
		{"", "c1", Publish, "up/c1", true, "acl:30"},
		// %u patterns never match without a username.
		{"", "c1", Receive, "/inbox", false, "default"},
		// Usernames without a section get the patterns only.
		{"dave", "d", Publish, "devices/dave/x", true, "acl:27"},
		{"dave", "d", Receive, "public/x", false, "default"},
		// $SYS: read only by explicit grant, never written; $share never
		// published or received; '#' does not reach '$' topics.
		{"bob", "x", Receive, "$SYS/broker/uptime", false, "default"},
		{"root", "x", Receive, "$SYS/broker/uptime", false, "default"},
		{"sys", "x", Receive, "$SYS/broker/uptime", true, "acl:34"},
		{"sys", "x", Publish, "$SYS/broker/uptime", false, "acl"},
		{"sys", "x", Publish, "$moat/x", true, "acl:36"},
		{"root", "x", Publish, "$moat/x", false, "default"},
		{"root", "x", Publish, "$share/g/x", false, "acl"},
		{"root", "x", Receive, "$share/g/x", false, "acl"},
		// Subscriptions (stricter than Mosquitto): refused when nothing
		// under the filter can ever be received.
		{"", "a1", Subscribe, "public/#", true, "acl:2"},
		{"", "a1", Subscribe, "#", true, "acl:2"},
		{"", "a1", Subscribe, "+/x", true, "acl:2"},
		{"", "a1", Subscribe, "public/secret/#", false, "default"},
		{"", "a1", Subscribe, "public/secret/a/+", false, "default"},
		{"", "a1", Subscribe, "alice/#", false, "default"},
		{"", "a1", Subscribe, "$SYS/#", false, "default"},
		{"alice", "x", Subscribe, "alice/private", false, "default"},
		{"alice", "x", Subscribe, "alice/+", true, "acl:7"},
		{"alice", "x", Subscribe, "cmd/alice", false, "default"},
		{"alice", "x", Subscribe, "devices/alice/#", true, "acl:27"},
		{"alice", "x", Subscribe, "devices/alice/locked", false, "default"},
		{"alice", "x", Subscribe, "devices/bob/#", false, "default"},
		{"bob", "x", Subscribe, "alice/#", false, "default"},
		{"bob", "x", Subscribe, "#", true, "acl:14"},
		{"root", "x", Subscribe, "$SYS/#", false, "default"},
		{"sys", "x", Subscribe, "$SYS/#", true, "acl:34"},
		{"ev+il", "x", Subscribe, "public/#", true, "acl:19"},
		{"ev+il", "x", Subscribe, "devices/#", false, "acl"},
	})
}

// TestSecurityPatternWildcardIdentity: a client picks the username or
// client ID "+" or "#" so that "pattern read devices/%u/#" would become
// "devices/+/#" and let it read every device. Mosquitto denies such
// identities everything the patterns would decide; so must the engine, on
// receive, publish and subscribe.
func TestSecurityPatternWildcardIdentity(t *testing.T) {
	p := mustACL(t, "user +\ntopic read own\nuser #\npattern readwrite devices/%u/#\npattern readwrite clients/%c/#\n")
	runCases(t, p, []decideCase{
		{"+", "c", Receive, "devices/bob/x", false, "acl"},
		{"+", "c", Subscribe, "devices/+/x", false, "acl"},
		{"#", "c", Receive, "devices/bob/x", false, "acl"},
		{"#", "c", Publish, "devices/bob/x", false, "acl"},
		{"bob", "+", Receive, "clients/alice/x", false, "acl"},
		{"", "#", Subscribe, "clients/#", false, "acl"},
		{"", "a#b", Publish, "clients/a#b/x", false, "acl"},
		// The user's own lines still apply, as in Mosquitto.
		{"+", "c", Receive, "own", true, "acl:2"},
	})
}

// TestSecurityPatternSlashIdentity: a client takes the client ID
// "victim/secret" so that "pattern read clients/%c/#" becomes
// "clients/victim/secret/#", a subtree of the device "victim". Mosquitto
// allows it; Moat never substitutes a value with '/'.
func TestSecurityPatternSlashIdentity(t *testing.T) {
	p := mustACL(t, "pattern read clients/%c/#\npattern read users/%u/#\n")
	runCases(t, p, []decideCase{
		{"", "victim/secret", Receive, "clients/victim/secret/x", false, "default"},
		{"", "victim/secret", Subscribe, "clients/victim/#", false, "default"},
		{"a/b", "c", Receive, "users/a/b/x", false, "default"},
		{"a", "c", Receive, "users/a/b/x", true, "acl:2"},
	})
}

// TestSecurityPatternDollarIdentity: a client takes the client ID "$SYS"
// (or a user is named "$moat") so that "pattern readwrite %c/#" becomes
// "$SYS/#" and reaches the broker's reserved topics. Substitutions never
// produce a '$' topic.
func TestSecurityPatternDollarIdentity(t *testing.T) {
	p := mustACL(t, "pattern readwrite %c/#\npattern readwrite %u/#\n")
	runCases(t, p, []decideCase{
		{"", "$SYS", Receive, "$SYS/broker/clients", false, "default"},
		{"", "$SYS", Subscribe, "$SYS/#", false, "default"},
		{"$moat", "c", Publish, "$moat/x", false, "default"},
		{"$moat", "c", Subscribe, "$moat/#", false, "default"},
		{"", "c", Publish, "c/x", true, "acl:1"},
	})
}

// TestSecurityACLFileSizeCap: an acl_file of endless lines (a device or a
// mistaken path such as /dev/zero) must be refused, not read into memory.
func TestSecurityACLFileSizeCap(t *testing.T) {
	line := "# " + strings.Repeat("x", 4094) + "\n"
	r := io.LimitReader(&repeatReader{s: line}, MaxACLFileSize+int64(len(line)))
	_, err := ParseACLFile("big", r)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ParseACLFile of %d bytes = %v, want a size error", MaxACLFileSize+len(line), err)
	}
	_, err = ParseACLFile("zero", io.LimitReader(&repeatReader{s: "\x00"}, 1<<20))
	if err == nil {
		t.Fatal("ParseACLFile of NUL bytes succeeded")
	}
}

type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.s[r.off:])
		n += c
		r.off = (r.off + c) % len(r.s)
	}
	return n, nil
}

func TestNoSubjectOrPolicy(t *testing.T) {
	p := mustACL(t, "topic read #\n")
	if d := p.Decide(Request{Action: Receive, Topic: "a"}); d.Allow {
		t.Error("nil subject allowed")
	}
	if d := p.Decide(Request{Subject: &Subject{Anonymous: true}, Action: 9, Topic: "a"}); d.Allow {
		t.Error("unknown action allowed")
	}
	var h Holder
	if d := h.Decide(Request{Subject: &Subject{Anonymous: true}, Action: Receive, Topic: "a"}); d.Allow {
		t.Error("empty Holder allowed")
	}
	var zero Policy
	if d := zero.Decide(Request{Subject: &Subject{Anonymous: true}, Action: Receive, Topic: "a"}); d.Allow {
		t.Error("zero Policy allowed")
	}
	_ = netip.Addr{}
}
