package cli

// The mosquitto_pub/mosquitto_sub flags -F, -D, --retained-only,
// --remove-retained, --tls-version, --tls-use-os-certs and --quiet,
// against the in-process broker.

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

func TestSubFormat(t *testing.T) {
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	conn := []string{"-h", "127.0.0.1", "-p", port}
	sub := psRunAsync(ctx, append([]string{"sub", "-t", "fmt/x", "-q", "1", "-C", "1",
		"-F", `%t|%p|%q|%r|%l|%m|%x|%X|%%|\t|%C|%P|%I|%U|@Y-@m-@d @@`}, conn...)...)
	r := psPubUntil(t, sub, psMoatPub(ctx, append([]string{"-t", "fmt/x", "-m", "hi", "-q", "1",
		"-D", "publish", "content-type", "text/plain", "-D", "publish", "user-property", "k", "v"}, conn...)...))
	want := regexp.MustCompile(`^fmt/x\|hi\|1\|0\|2\|[1-9][0-9]*\|6869\|6869\|%\|\t\|text/plain\|k:v\|` +
		`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}\|\d+\.\d{9}\|\d{4}-\d\d-\d\d @\n$`)
	if r.code != 0 || !want.MatchString(r.out) {
		t.Fatalf("exit %d out %q err %s", r.code, r.out, r.err)
	}
	// %j prints the --json object; -N drops the line end.
	sub = psRunAsync(ctx, append([]string{"sub", "-t", "fmt/j", "-C", "1", "-N", "-F", "%j"}, conn...)...)
	r = psPubUntil(t, sub, psMoatPub(ctx, append([]string{"-t", "fmt/j", "-m", "v"}, conn...)...))
	if r.code != 0 || r.out != `{"topic":"fmt/j","qos":0,"retain":false,"payload":"v"}` {
		t.Fatalf("%%j: exit %d out %q err %s", r.code, r.out, r.err)
	}
	for _, tc := range []struct{ format, want string }{
		{"%Z", "%Z is not supported"},
		{"@Q", "@Q is not supported"},
		{`\q`, `unknown escape \q`},
		{"abc%", "at the end"},
	} {
		r := psRun(ctx, "", append([]string{"sub", "-t", "a", "-F", tc.format}, conn...)...)
		if r.code != 1 || !strings.Contains(r.err, tc.want) {
			t.Errorf("-F %q: exit %d stderr %q, want %q", tc.format, r.code, r.err, tc.want)
		}
	}
	if r := psRun(ctx, "", append([]string{"sub", "-t", "a", "-F", "%p", "--json"}, conn...)...); r.code != 1 || !strings.Contains(r.err, "either -F") {
		t.Errorf("-F with --json: %d %q", r.code, r.err)
	}
}

// TestPropertiesFlag checks -D on the packets the broker receives.
func TestPropertiesFlag(t *testing.T) {
	var mu sync.Mutex
	var connects []*packet.Connect
	auth := broker.AuthenticatorFunc(func(ctx context.Context, req *broker.ConnectRequest) broker.AuthResult {
		mu.Lock()
		connects = append(connects, req.Connect)
		mu.Unlock()
		return broker.AuthResult{Allow: true}
	})
	port := psStartMoat(t, broker.Config{Authenticator: auth})
	ctx := psTestCtx(t)
	conn := []string{"-h", "127.0.0.1", "-p", port}

	t.Run("connect-and-will", func(t *testing.T) {
		r := psRun(ctx, "", append([]string{"pub", "-t", "p/c", "-m", "x", "-i", "dprops",
			"-D", "connect", "session-expiry-interval", "60", "-D", "connect", "user-property", "site", "lab",
			"-D", "connect", "receive-maximum", "10",
			"--will-topic", "p/will", "-D", "will", "will-delay-interval", "5", "-D", "will", "content-type", "text/plain"}, conn...)...)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.err)
		}
		mu.Lock()
		c := connects[len(connects)-1]
		mu.Unlock()
		p := &c.Properties
		if p.SessionExpiry != 60 || p.ReceiveMaximum != 10 || len(p.User) != 1 || p.User[0].Key != "site" || p.User[0].Value != "lab" {
			t.Fatalf("CONNECT properties %+v", p)
		}
		if c.Will == nil || c.Will.Properties.WillDelay != 5 || c.Will.Properties.ContentType != "text/plain" {
			t.Fatalf("will %+v", c.Will)
		}
	})
	t.Run("publish-and-subscribe", func(t *testing.T) {
		sub := psRunAsync(ctx, append([]string{"sub", "-t", "p/s", "-C", "1", "-D", "subscribe", "subscription-identifier", "7",
			"-F", "%S %C %R %D %E %F %P"}, conn...)...)
		r := psPubUntil(t, sub, psMoatPub(ctx, append([]string{"-t", "p/s", "-m", "x",
			"-D", "publish", "content-type", "a/b", "-D", "publish", "response-topic", "p/reply",
			"-D", "publish", "correlation-data", "c1", "-D", "publish", "message-expiry-interval", "300",
			"-D", "publish", "payload-format-indicator", "1", "-D", "publish", "user-property", "k", "-v-"}, conn...)...))
		// The expiry counts down in the broker: 299 or 300.
		if r.code != 0 || !regexp.MustCompile(`^7 a/b p/reply c1 (299|300) 1 k:-v-\n$`).MatchString(r.out) {
			t.Fatalf("exit %d out %q err %s", r.code, r.out, r.err)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unsupported command", []string{"pub", "-t", "a", "-m", "x", "-D", "disconnect", "session-expiry-interval", "0"}, "-D disconnect session-expiry-interval: not supported here; supported: connect"},
		{"publish property on sub", []string{"sub", "-t", "a", "-D", "publish", "content-type", "x"}, "not supported here"},
		{"unknown property", []string{"pub", "-t", "a", "-m", "x", "-D", "publish", "topic-alias", "1"}, "not supported here"},
		{"bad number", []string{"pub", "-t", "a", "-m", "x", "-D", "connect", "receive-maximum", "0"}, "want 1..65535"},
		{"missing value", []string{"pub", "-t", "a", "-m", "x", "-D", "publish", "user-property", "k"}, "needs a key and a value"},
		{"MQTT 3.1.1", []string{"pub", "-V", "311", "-t", "a", "-m", "x", "-D", "publish", "content-type", "x"}, "not with -V 311"},
		{"one-word form", []string{"pub", "-t", "a", "-m", "x", "--property=publish"}, "-D takes three words"},
		{"will without will", []string{"pub", "-t", "a", "-m", "x", "-D", "will", "content-type", "x"}, "add --will-topic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The connection flags first: -D is last on the line.
			r := psRun(ctx, "", append(append([]string{tc.args[0]}, conn...), tc.args[1:]...)...)
			if r.code != 1 || !strings.Contains(r.err, tc.want) {
				t.Fatalf("exit %d stderr %q, want %q", r.code, r.err, tc.want)
			}
		})
	}
}

// TestParseClientArgs checks that -D groups are taken out without
// disturbing flags whose values look like -D.
func TestParseClientArgs(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		props string
		topic string
		msg   string
	}{
		{[]string{"-t", "a", "-D", "publish", "content-type", "x", "-m", "-D"}, "[{publish content-type [x]}]", "a", "-D"},
		{[]string{"-vt", "-D", "-m", "m"}, "[]", "-D", "m"},
		{[]string{"--topic=t", "-D", "connect", "user-property", "-k", "-v", "-m", "m"}, "[{connect user-property [-k -v]}]", "t", "m"},
	} {
		cmd := &cobra.Command{}
		var topic, msg string
		var verbose bool
		cmd.Flags().Bool("help", false, "")
		cmd.Flags().StringVarP(&topic, "topic", "t", "", "")
		cmd.Flags().StringVarP(&msg, "message", "m", "", "")
		cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "")
		props, _, err := parseClientArgs(cmd, tc.args)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		var got []string
		for _, p := range props {
			got = append(got, "{"+p.cmd+" "+p.id+" ["+strings.Join(p.values, " ")+"]}")
		}
		if "["+strings.Join(got, " ")+"]" != tc.props || topic != tc.topic || msg != tc.msg {
			t.Errorf("%q: props %v topic %q message %q", tc.args, got, topic, msg)
		}
	}
	if r := psRun(context.Background(), "", "sub", "--help"); r.code != 0 || !strings.Contains(r.out, "--retained-only") {
		t.Fatalf("sub --help: %d %q %q", r.code, r.out, r.err)
	}
	if r := psRun(context.Background(), "", "pub", "-t", "a", "stray"); r.code != 1 || !strings.Contains(r.err, `unexpected argument "stray"`) {
		t.Fatalf("stray argument: %d %q", r.code, r.err)
	}
}

func TestRetainedOnlyAndRemoveRetained(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	conn := []string{"-h", "127.0.0.1", "-p", port}
	pub := func(args ...string) {
		t.Helper()
		if err := psMoatPub(ctx, append(args, conn...)...)(); err != nil {
			t.Fatal(err)
		}
	}
	pub("-t", "rt/a", "-m", "A", "-r", "-q", "1")
	pub("-t", "rt/b", "-m", "B", "-r", "-q", "1")
	pub("-t", "rt/keep", "-m", "K", "-r", "-q", "1")

	// --retained-only prints the retained messages and exits at the
	// first live one.
	sub := psRunAsync(ctx, append([]string{"sub", "-t", "rt/#", "--retained-only", "-v", "-q", "1"}, conn...)...)
	r := psPubUntil(t, sub, psMoatPub(ctx, append([]string{"-t", "rt/live", "-m", "L"}, conn...)...))
	if r.code != 0 || strings.Contains(r.out, "L") || !strings.Contains(r.out, "rt/a A\n") || !strings.Contains(r.out, "rt/b B\n") {
		t.Fatalf("--retained-only: exit %d out %q err %s", r.code, r.out, r.err)
	}
	if r := psRun(ctx, "", append([]string{"sub", "-t", "a", "--retained-only", "-R"}, conn...)...); r.code != 1 {
		t.Fatalf("--retained-only -R accepted")
	}

	// --remove-retained clears what it receives, except what -T filters.
	r = psRun(ctx, "", append([]string{"sub", "-t", "rt/#", "--remove-retained", "-T", "rt/keep", "-v", "-W", "1"}, conn...)...)
	if r.code != exitTimedOut || !strings.Contains(r.out, "rt/a A\n") || strings.Contains(r.out, "K") {
		t.Fatalf("--remove-retained: exit %d out %q err %s", r.code, r.out, r.err)
	}
	r = psRun(ctx, "", append([]string{"sub", "-t", "rt/#", "-v", "-W", "1"}, conn...)...)
	if r.out != "rt/keep K\n" {
		t.Fatalf("retained messages left: %q (want only rt/keep)", r.out)
	}
}

func TestTLSVersionAndOSCerts(t *testing.T) {
	dir := t.TempDir()
	psNewCA(t, dir, "ca").Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, EKU: testpki.ServerAuth,
		KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, "server")
	f := func(n string) string { return filepath.Join(dir, n) }
	cert, err := tls.LoadX509KeyPair(f("server.pem"), f("server.key"))
	if err != nil {
		t.Fatal(err)
	}
	// The broker speaks TLS 1.2 only.
	port := strconv.Itoa(brokertest.Start(t, broker.Config{AllowAnonymous: true}, brokertest.Options{
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12},
	}).Port())
	ctx := psTestCtx(t)
	base := []string{"pub", "-h", "localhost", "-p", port, "-t", "tv", "-m", "x"}
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for success
	}{
		{"default", []string{"--cafile", f("ca.pem")}, ""},
		{"tlsv1.2", []string{"--cafile", f("ca.pem"), "--tls-version", "tlsv1.2"}, ""},
		{"tlsv1.3 refused by the broker", []string{"--cafile", f("ca.pem"), "--tls-version", "tlsv1.3"}, "check --tls-version"},
		{"tlsv1.1 refused", []string{"--cafile", f("ca.pem"), "--tls-version", "tlsv1.1"}, "TLS before 1.2 is insecure"},
		{"unknown version", []string{"--cafile", f("ca.pem"), "--tls-version", "ssl3"}, "use tlsv1.3 or tlsv1.2"},
		// The test CA is not among the system's: trusted only with --cafile.
		{"os certs alone", []string{"--tls-use-os-certs"}, "pass --cafile with the broker's CA"},
		{"os certs and cafile", []string{"--tls-use-os-certs", "--cafile", f("ca.pem")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := psRun(ctx, "", append(append([]string(nil), base...), tc.args...)...)
			if tc.want == "" && r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.err)
			}
			if tc.want != "" && (r.code != 1 || !strings.Contains(r.err, tc.want)) {
				t.Fatalf("exit %d stderr %q, want %q", r.code, r.err, tc.want)
			}
		})
	}
}

func TestQuiet(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	closed := strconv.Itoa(testutil.FreePort(t)) // nothing listens
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"connection error", []string{"pub", "-h", "127.0.0.1", "-p", closed, "-t", "q", "-m", "x", "--quiet"}, 1},
		{"flag error", []string{"sub", "-t", "a/#/b", "--quiet"}, 1},
		{"warning", []string{"pub", "-h", "127.0.0.1", "-p", port, "-t", "q", "-m", "x", "-u", "u", "-P", "pw", "--quiet"}, 0},
		{"timeout", []string{"sub", "-h", "127.0.0.1", "-p", port, "-t", "q/none", "-W", "1", "--quiet"}, exitTimedOut},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := psRun(ctx, "", tc.args...)
			if r.code != tc.code || r.err != "" {
				t.Fatalf("exit %d (want %d), stderr %q (want nothing)", r.code, tc.code, r.err)
			}
		})
	}
	// Without --quiet the same connection error is printed.
	if r := psRun(ctx, "", "pub", "-h", "127.0.0.1", "-p", closed, "-t", "q", "-m", "x"); r.code != 1 || r.err == "" {
		t.Fatalf("exit %d stderr %q", r.code, r.err)
	}
}
