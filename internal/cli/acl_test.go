package cli

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

func runACL(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"acl", "test"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

func TestACLTestCommand(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl")
	writeFile(t, acl, "topic read public/#\nuser alice\ntopic readwrite alice/#\ntopic deny alice/private\npattern read devices/%u/#\n")
	conf := filepath.Join(dir, "mosquitto.conf")
	writeFile(t, conf, "listener 1883\nallow_anonymous true\nacl_file "+acl+"\n")
	rules := filepath.Join(dir, "rules.yaml")
	writeFile(t, rules, `rules:
  - name: ops
    effect: allow
    subjects: {groups: [ops], sources: [10.0.0.0/8]}
    actions: [publish, read]
    topics: ["#"]
  - name: devices
    effect: allow
    subjects: {ou: [devices]}
    actions: [publish, read]
    topics: ["devices/%{cn}/#", "svc/%{spiffe}"]
`)
	moatYAML := filepath.Join(dir, "moat.yaml")
	writeFile(t, moatYAML, "listeners:\n  - address: 127.0.0.1:8883\nacl:\n  acl_file: "+acl+"\n  rules:\n    - {effect: deny, subjects: {all: true}, actions: [publish], topics: [\"alice/locked\"]}\n")
	cert := filepath.Join(dir, "dev.pem")
	writeTestCert(t, cert)

	for _, c := range []struct {
		args []string
		code int
		out  []string
	}{
		{[]string{"--acl-file", acl, "--user", "alice", "publish", "alice/x"}, 0, []string{"allow publish alice/x", acl + ":3"}},
		{[]string{"--acl-file", acl, "--user", "alice", "publish", "alice/private"}, 1, []string{"deny publish alice/private", acl + ":4", "denies"}},
		{[]string{"--acl-file", acl, "receive", "public/news"}, 0, []string{"anonymous", acl + ":1"}},
		{[]string{"--acl-file", acl, "subscribe", "$share/g/public/#"}, 0, []string{"allow subscribe $share/g/public/#"}},
		{[]string{"--acl-file", acl, "subscribe", "alice/#"}, 1, []string{"rule:   default"}},
		{[]string{"--config", conf, "--user", "bob", "receive", "devices/bob/t"}, 0, []string{acl + ":5"}},
		{[]string{"--config", moatYAML, "--user", "alice", "publish", "alice/locked"}, 1, []string{moatYAML + ": rules[1]"}},
		{[]string{"--config", moatYAML, "--user", "alice", "publish", "alice/open"}, 0, []string{acl + ":3"}},
		{[]string{"--rules", rules, "--user", "op", "--group", "ops", "--addr", "10.2.3.4", "publish", "x/y"}, 0, []string{rules + ": ops"}},
		{[]string{"--rules", rules, "--user", "op", "--group", "ops", "--addr", "192.0.2.1", "publish", "x/y"}, 1, []string{"default"}},
		{[]string{"--rules", rules, "--cert", cert, "publish", "devices/sensor-7/t"}, 0, []string{"user sensor-7", rules + ": devices"}},
		{[]string{"--rules", rules, "--cert", cert, "publish", "svc/spiffe://example.org/sensor-7"}, 0, []string{rules + ": devices"}},
		{[]string{"--rules", rules, "--cert", cert, "publish", "devices/sensor-8/t"}, 1, []string{"deny"}},
	} {
		code, out, errOut := runACL(t, c.args...)
		if code != c.code {
			t.Errorf("acl test %v: exit %d, want %d\n%s%s", c.args, code, c.code, out, errOut)
			continue
		}
		for _, w := range c.out {
			if !strings.Contains(out, w) {
				t.Errorf("acl test %v: output lacks %q:\n%s", c.args, w, out)
			}
		}
	}
}

func TestACLTestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl")
	writeFile(t, acl, "topic read #\n")
	bad := filepath.Join(dir, "bad.acl")
	writeFile(t, bad, "topic bogus x\n")
	typo := filepath.Join(dir, "typo.yaml")
	writeFile(t, typo, "rules:\n  - {effect: allow, subject: {all: true}, actions: [publish], topics: ['#']}\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--acl-file", acl, "publish"}, "want ACTION TOPIC"},
		{[]string{"--acl-file", acl, "write", "a"}, "unknown action"},
		{[]string{"--acl-file", acl, "publish", "a/+"}, "without wildcards"},
		{[]string{"--acl-file", acl, "subscribe", "a/#/b"}, "topic filter"},
		{[]string{"publish", "a"}, "exactly one of"},
		{[]string{"--acl-file", acl, "--rules", acl, "publish", "a"}, "exactly one of"},
		{[]string{"--acl-file", bad, "publish", "a"}, "bad.acl:1: invalid access"},
		{[]string{"--rules", typo, "publish", "a"}, "field subject not found"},
		{[]string{"--acl-file", acl, "--addr", "nope", "publish", "a"}, "not an IP address"},
		{[]string{"--acl-file", acl, "--bogus", "publish", "a"}, "unknown flag"},
		{[]string{"--acl-file", acl, "--qos", "3", "publish", "a"}, "--qos 3"},
	} {
		code, out, errOut := runACL(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("acl test %v: exit %d, stderr %q, want 2 and %q (stdout %q)", c.args, code, errOut, c.want, out)
		}
	}
}

// writeTestCert writes a self-signed certificate for sensor-7 (OU
// devices, a SPIFFE ID) to path: the identity `moat acl test --cert` reads.
func writeTestCert(t *testing.T, path string) {
	t.Helper()
	testpki.SelfSigned(t, testpki.Options{
		Subject: &pkix.Name{CommonName: "sensor-7", OrganizationalUnit: []string{"devices"}},
		URIs:    []string{"spiffe://example.org/sensor-7"},
		Serial:  big.NewInt(7),
		NoEKU:   true,
	}).WritePEM(t, path)
}
