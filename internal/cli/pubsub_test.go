package cli

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

type psResult struct {
	code     int
	out, err string
}

// psRun runs the moat command line with stdin.
func psRun(ctx context.Context, stdin string, args ...string) psResult {
	var out, errb testutil.Buffer
	code := Main(ctx, args, Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	return psResult{code, out.String(), errb.String()}
}

// psRunAsync starts the command in a goroutine.
func psRunAsync(ctx context.Context, args ...string) <-chan psResult {
	ch := make(chan psResult, 1)
	go func() { ch <- psRun(ctx, "", args...) }()
	return ch
}

// psPubUntil publishes with pub args every 50 ms until the subscriber
// command finishes, and returns its result.
func psPubUntil(t *testing.T, sub <-chan psResult, pub func() error) psResult {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case r := <-sub:
			return r
		case <-deadline:
			t.Fatal("subscriber did not finish")
		case <-time.After(50 * time.Millisecond):
			if err := pub(); err != nil {
				t.Fatalf("publisher: %v", err)
			}
		}
	}
}

func psMoatPub(ctx context.Context, args ...string) func() error {
	return func() error {
		if r := psRun(ctx, "", append([]string{"pub"}, args...)...); r.code != 0 {
			return fmt.Errorf("moat pub exit %d: %s", r.code, r.err)
		}
		return nil
	}
}

func psTestCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// psStartMoat runs Moat's broker in-process and returns its port; clients
// are anonymous unless cfg has an Authenticator.
func psStartMoat(t *testing.T, cfg broker.Config) string {
	t.Helper()
	if cfg.Authenticator == nil {
		cfg.AllowAnonymous = true
	}
	return strconv.Itoa(brokertest.Start(t, cfg, brokertest.Options{}).Port())
}

func TestPubSub(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	conn := []string{"-h", "127.0.0.1", "-p", port}
	args := func(a ...string) []string { return append(append([]string(nil), a[:1]...), append(conn, a[1:]...)...) }
	pa := func(a ...string) []string { return append(append([]string(nil), conn...), a...) }

	t.Run("verbose", func(t *testing.T) {
		sub := psRunAsync(ctx, args("sub", "-C", "1", "-t", "x/#", "-v")...)
		r := psPubUntil(t, sub, psMoatPub(ctx, pa("-t", "x/y", "-m", "hi")...))
		if r.code != 0 || r.out != "x/y hi\n" {
			t.Fatalf("sub: %+v", r)
		}
	})
	t.Run("json", func(t *testing.T) {
		sub := psRunAsync(ctx, args("sub", "-C", "1", "-t", "j", "--json", "-q", "1")...)
		r := psPubUntil(t, sub, psMoatPub(ctx, pa("-t", "j", "-m", "héllo", "-q", "1", "--user-property", "k=v",
			"--content-type", "text/plain", "--message-expiry", "60")...))
		if r.code != 0 {
			t.Fatalf("sub: %+v", r)
		}
		var got struct {
			Topic      string
			QoS        int
			Payload    string
			Properties struct {
				ContentType string      `json:"content_type"`
				Expiry      int         `json:"message_expiry"`
				User        [][2]string `json:"user_properties"`
			}
		}
		if err := json.Unmarshal([]byte(r.out), &got); err != nil {
			t.Fatalf("%v: %q", err, r.out)
		}
		if got.Topic != "j" || got.QoS != 1 || got.Payload != "héllo" || got.Properties.ContentType != "text/plain" ||
			got.Properties.Expiry == 0 || got.Properties.Expiry > 60 || fmt.Sprint(got.Properties.User) != "[[k v]]" {
			t.Fatalf("JSON %s", r.out)
		}
	})
	t.Run("json-binary", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "bin")
		os.WriteFile(bin, []byte{0xff, 0x00, 0x01}, 0o600)
		sub := psRunAsync(ctx, args("sub", "-C", "1", "-t", "b", "--json")...)
		r := psPubUntil(t, sub, psMoatPub(ctx, pa("-t", "b", "-f", bin)...))
		if r.code != 0 || !strings.Contains(r.out, `"payload_base64":"/wAB"`) || strings.Contains(r.out, `"payload":`) {
			t.Fatalf("sub: %+v", r)
		}
	})
	t.Run("lines-into-persistent-session", func(t *testing.T) {
		// -E with -c creates the session; messages published while the
		// subscriber is away are queued and delivered on return.
		if r := psRun(ctx, "", args("sub", "-c", "-i", "lines-sub", "-q", "1", "-t", "lines", "-E")...); r.code != 0 {
			t.Fatalf("sub -E: %+v", r)
		}
		r := psRun(ctx, "one\n\ntwo\nthree\n", args("pub", "-t", "lines", "-l", "-q", "1", "--json")...)
		if r.code != 0 || strings.Count(r.out, `"status":"ok"`) != 3 {
			t.Fatalf("pub -l: %+v", r)
		}
		// -C 1 prints one message; the others stay with the broker.
		r = psRun(ctx, "", args("sub", "-c", "-i", "lines-sub", "-q", "1", "-t", "lines", "-C", "1")...)
		if r.code != 0 || r.out != "one\n" {
			t.Fatalf("sub -C 1: %+v", r)
		}
		r = psRun(ctx, "", args("sub", "-c", "-i", "lines-sub", "-q", "1", "-t", "lines", "-C", "2")...)
		if r.code != 0 || r.out != "two\nthree\n" {
			t.Fatalf("sub -C 2: %+v", r)
		}
	})
	t.Run("file-retained-and-stdin", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "msg")
		os.WriteFile(file, []byte("from file\nline 2"), 0o600)
		if r := psRun(ctx, "", args("pub", "-t", "ret", "-f", file, "-r", "-q", "1")...); r.code != 0 {
			t.Fatalf("pub -f: %+v", r)
		}
		r := psRun(ctx, "", args("sub", "-t", "ret", "-C", "1", "-N")...)
		if r.code != 0 || r.out != "from file\nline 2" {
			t.Fatalf("sub retained: %+v", r)
		}
		if r := psRun(ctx, "", args("sub", "-t", "ret", "-R", "-W", "1")...); r.code != exitTimedOut || r.out != "" {
			t.Fatalf("sub -R printed the retained message or did not time out: %+v", r)
		}
		if r := psRun(ctx, "all of\nstdin", args("pub", "-t", "ret", "-s", "-r")...); r.code != 0 {
			t.Fatalf("pub -s: %+v", r)
		}
		if r := psRun(ctx, "", args("sub", "-t", "ret", "-C", "1")...); r.out != "all of\nstdin\n" {
			t.Fatalf("sub: %+v", r)
		}
		psRun(ctx, "", args("pub", "-t", "ret", "-n", "-r")...)
	})
	t.Run("repeat", func(t *testing.T) {
		if r := psRun(ctx, "", args("sub", "-c", "-i", "repeat-sub", "-q", "1", "-t", "rep", "-E")...); r.code != 0 {
			t.Fatalf("sub -E: %+v", r)
		}
		if r := psRun(ctx, "", args("pub", "-t", "rep", "-m", "again", "-q", "1", "--repeat", "3", "--repeat-delay", "0.01")...); r.code != 0 {
			t.Fatalf("pub --repeat: %+v", r)
		}
		r := psRun(ctx, "", args("sub", "-c", "-i", "repeat-sub", "-q", "1", "-t", "rep", "-C", "3")...)
		if r.code != 0 || r.out != "again\nagain\nagain\n" {
			t.Fatalf("sub: %+v", r)
		}
	})
	t.Run("filter-out", func(t *testing.T) {
		sub := psRunAsync(ctx, args("sub", "-C", "1", "-t", "fo/#", "-T", "fo/skip", "-v")...)
		n := 0
		r := psPubUntil(t, sub, func() error {
			n++
			if n%2 == 1 {
				return psMoatPub(ctx, pa("-t", "fo/skip", "-m", "no")...)()
			}
			return psMoatPub(ctx, pa("-t", "fo/keep", "-m", "yes")...)()
		})
		if r.out != "fo/keep yes\n" {
			t.Fatalf("sub: %+v", r)
		}
	})
	t.Run("interrupt", func(t *testing.T) {
		ictx, cancel := context.WithCancel(ctx)
		sub := psRunAsync(ictx, args("sub", "-t", "quiet")...)
		time.AfterFunc(500*time.Millisecond, cancel) // after the connection, generously
		select {
		case r := <-sub:
			if r.code != 0 {
				t.Fatalf("sub after interrupt: %+v", r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("sub ignored the interrupt")
		}
	})
	t.Run("timeout", func(t *testing.T) {
		r := psRun(ctx, "", args("sub", "-t", "quiet", "-W", "1")...)
		if r.code != exitTimedOut || !strings.Contains(r.err, "Timed out") {
			t.Fatalf("sub -W: %+v", r)
		}
	})
	for _, v := range []string{"311", "mqttv31", "mqttv5"} {
		t.Run("version-"+v, func(t *testing.T) {
			sub := psRunAsync(ctx, args("sub", "-V", v, "-C", "1", "-t", "v"+v)...)
			r := psPubUntil(t, sub, psMoatPub(ctx, pa("-V", v, "-t", "v"+v, "-m", v)...))
			if r.code != 0 || r.out != v+"\n" {
				t.Fatalf("sub: %+v", r)
			}
		})
	}
}

func TestPubSubErrors(t *testing.T) {
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no-topic", []string{"pub", "-m", "x"}, "no topic"},
		{"two-sources", []string{"pub", "-t", "a", "-m", "x", "-n"}, "exactly one of"},
		{"no-source", []string{"pub", "-t", "a"}, "exactly one of"},
		{"wildcard", []string{"pub", "-t", "a/#", "-m", "x"}, "wildcard"},
		{"bad-version", []string{"pub", "-t", "a", "-m", "x", "-V", "6"}, "unknown protocol version"},
		{"bad-qos", []string{"sub", "-t", "a", "-q", "3"}, "QoS"},
		{"persistent-without-id", []string{"sub", "-t", "a", "-c"}, "needs a client ID"},
		{"refused-port", []string{"pub", "-t", "a", "-m", "x", "-p", "1"}, "connect"},
		{"bad-filter", []string{"sub", "-t", "a/#/b"}, "topic filter"},
		{"url-and-host", []string{"pub", "-L", "mqtt://127.0.0.1:" + port + "/t", "-h", "x", "-m", "x"}, "either"},
		{"cert-without-key", []string{"pub", "-t", "a", "-m", "x", "--cert", "c.pem"}, "--cert and --key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args, "--connect-timeout", "5s")
			if tc.name != "refused-port" && tc.name != "url-and-host" {
				args = append(args, "-p", port, "-h", "127.0.0.1")
			}
			r := psRun(ctx, "", args...)
			if r.code == 0 || !strings.Contains(r.err, tc.want) {
				t.Fatalf("exit %d, stderr %q; want failure mentioning %q", r.code, r.err, tc.want)
			}
		})
	}
}

// TestPasswordSources checks the ways to give a password: file and
// environment silently, -P with a warning.
func TestPasswordSources(t *testing.T) {
	auth := broker.AuthenticatorFunc(func(ctx context.Context, req *broker.ConnectRequest) broker.AuthResult {
		c := req.Connect
		if c.Username == "alice" && subtle.ConstantTimeCompare(c.Password, []byte("s3cret")) == 1 {
			return broker.AuthResult{Allow: true}
		}
		return broker.AuthResult{Code: packet.BadUsernameOrPassword, Reason: "test"}
	})
	port := psStartMoat(t, broker.Config{Authenticator: auth})
	ctx := psTestCtx(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("s3cret\n"), 0o600)
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte("s3cret"), 0o644)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("wrong\n"), 0o600)
	base := []string{"pub", "-h", "127.0.0.1", "-p", port, "-t", "a", "-m", "x", "-u", "alice"}
	cases := []struct {
		name     string
		args     []string
		env      string
		ok       bool
		warnWant string
	}{
		{"file", []string{"--password-file", good}, "", true, ""},
		{"env", nil, "s3cret", true, ""},
		{"flag-warns", []string{"-P", "s3cret"}, "", true, "-P puts the password on the command line"},
		{"loose-file-warns", []string{"--password-file", loose}, "", true, "readable by other users"},
		{"wrong", []string{"--password-file", bad}, "", false, ""},
		{"url-warns", []string{"-L", "mqtt://alice:s3cret@127.0.0.1:" + port + "/a"}, "", true, "URL puts the password"},
		{"two-sources", []string{"-P", "x", "--password-file", good}, "", false, "use one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			old := getenv
			getenv = func(k string) string {
				if k == passwordEnv {
					return tc.env
				}
				return ""
			}
			defer func() { getenv = old }()
			args := append(append([]string(nil), base...), tc.args...)
			if tc.name == "url-warns" {
				args = []string{"pub", "-m", "x", "-L", tc.args[1]}
			}
			r := psRun(ctx, "", args...)
			if (r.code == 0) != tc.ok {
				t.Fatalf("exit %d, stderr %q", r.code, r.err)
			}
			if tc.warnWant != "" && !strings.Contains(r.err, tc.warnWant) {
				t.Fatalf("stderr %q lacks %q", r.err, tc.warnWant)
			}
			if strings.Contains(r.err, "s3cret") {
				t.Fatalf("password echoed: %q", r.err)
			}
			if tc.name == "wrong" && !strings.Contains(r.err, "bad user name or password") {
				t.Fatalf("stderr %q", r.err)
			}
		})
	}
}

// TestServerSelection checks the default port and TLS rules.
func TestServerSelection(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	psWriteTestCA(t, ca)
	cases := []struct {
		args []string
		want string
	}{
		{nil, "mqtt://localhost:1883"},
		{[]string{"-p", "1884"}, "mqtt://localhost:1884"},
		{[]string{"--cafile", ca}, "mqtts://localhost:8883"},
		{[]string{"--cafile", ca, "-p", "9000"}, "mqtts://localhost:9000"},
		{[]string{"-p", "8883"}, "mqtts://localhost:8883"},
		{[]string{"--tls", "-h", "broker.example"}, "mqtts://broker.example:8883"},
		{[]string{"-h", "::1"}, "mqtt://[::1]:1883"},
		{[]string{"-L", "wss://b.example/mqtt"}, "wss://b.example/mqtt"},
		{[]string{"-L", "mqtts://b.example:8884/a/topic"}, "mqtts://b.example:8884"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var f2 clientFlags
			fs2 := pflag.NewFlagSet("test", pflag.ContinueOnError)
			f2.register(fs2)
			if err := fs2.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, _, err := f2.config(fs2, Stdio{Err: &bytes.Buffer{}})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Servers[0] != tc.want {
				t.Fatalf("server %q, want %q", cfg.Servers[0], tc.want)
			}
		})
	}
}

func psWriteTestCA(t *testing.T, file string) {
	testpki.NewRoot(t, "ca", testpki.P256).WritePEM(t, file)
}

// TestMosquittoClientsCompat checks that mosquitto_sub receives what moat
// pub sends and moat sub what mosquitto_pub sends, through Moat's broker
// and through mosquitto.
func TestMosquittoClientsCompat(t *testing.T) {
	t.Parallel()
	mpub, err1 := exec.LookPath("mosquitto_pub")
	msub, err2 := exec.LookPath("mosquitto_sub")
	if err1 != nil || err2 != nil {
		t.Skip("mosquitto-clients not installed")
	}
	brokers := map[string]string{"moat": psStartMoat(t, broker.Config{})}
	if _, err := exec.LookPath("mosquitto"); err == nil {
		mq := testutil.StartMosquitto(t, 1, func(ports []int) string {
			return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", ports[0])
		})
		brokers["mosquitto"] = strconv.Itoa(mq.Ports[0])
	}
	ctx := psTestCtx(t)
	for name, port := range brokers {
		for _, v := range []string{"mqttv311", "mqttv5"} {
			t.Run(name+"/"+v+"/moat-pub-to-mosquitto_sub", func(t *testing.T) {
				var out bytes.Buffer
				cmd := exec.CommandContext(ctx, msub, "-h", "127.0.0.1", "-p", port, "-V", v, "-t", "compat/a", "-C", "1", "-v", "-q", "1")
				cmd.Stdout = &out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan psResult, 1)
				go func() { err := cmd.Wait(); done <- psResult{code: psExitCode(err)} }()
				r := psPubUntil(t, done, psMoatPub(ctx, "-h", "127.0.0.1", "-p", port, "-V", v, "-t", "compat/a", "-m", "from moat", "-q", "1"))
				if r.code != 0 || out.String() != "compat/a from moat\n" {
					t.Fatalf("mosquitto_sub exit %d output %q", r.code, out.String())
				}
			})
			t.Run(name+"/"+v+"/mosquitto_pub-to-moat-sub", func(t *testing.T) {
				sub := psRunAsync(ctx, "sub", "-h", "127.0.0.1", "-p", port, "-V", v, "-t", "compat/b", "-C", "1", "-v", "-q", "2")
				r := psPubUntil(t, sub, func() error {
					return exec.CommandContext(ctx, mpub, "-h", "127.0.0.1", "-p", port, "-V", v, "-t", "compat/b", "-m", "from mosquitto", "-q", "2").Run()
				})
				if r.code != 0 || r.out != "compat/b from mosquitto\n" {
					t.Fatalf("moat sub: %+v", r)
				}
			})
		}
	}
}

func psExitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// psNewCA makes a CA and writes its certificate to dir/NAME.pem.
func psNewCA(t *testing.T, dir, name string) *testpki.Cert {
	ca := testpki.NewRoot(t, name, testpki.P256)
	ca.WritePEM(t, filepath.Join(dir, name+".pem"))
	return ca
}

// TestPubSubMutualTLS runs moat pub/sub against a mosquitto listener that
// requires client certificates, and checks --insecure.
func TestPubSubMutualTLS(t *testing.T) {
	t.Parallel()
	testutil.NeedTool(t, "mosquitto")
	dir := t.TempDir()
	ca := psNewCA(t, dir, "ca")
	psNewCA(t, dir, "other-ca")
	ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, EKU: testpki.ServerAuth, KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, "server")
	ca.Issue(t, testpki.Options{CN: "device-1", EKU: testpki.ClientAuth, KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, "device")
	f := func(n string) string { return filepath.Join(dir, n) }
	port := strconv.Itoa(testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
			ports[0], f("ca.pem"), f("server.pem"), f("server.key"))
	}).Ports[0])
	ctx := psTestCtx(t)
	mtls := []string{"-p", port, "--cafile", f("ca.pem"), "--cert", f("device.pem"), "--key", f("device.key")}
	cases := []struct {
		name      string
		args      []string
		ok        bool
		errSubstr string
	}{
		{"mtls", append([]string{"-h", "localhost"}, mtls...), true, ""},
		{"no-client-cert", []string{"-h", "localhost", "-p", port, "--cafile", f("ca.pem")}, false, "certificate"},
		{"hostname-mismatch", append([]string{"-h", "127.0.0.1"}, mtls...), false, "host name in the certificate"},
		{"insecure-skips-hostname", append([]string{"-h", "127.0.0.1", "--insecure"}, mtls...), true, "--insecure"},
		{"insecure-still-checks-ca", []string{"-h", "127.0.0.1", "--insecure", "-p", port, "--cafile", f("other-ca.pem"),
			"--cert", f("device.pem"), "--key", f("device.key")}, false, "certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic := "tls/" + tc.name
			if !tc.ok {
				r := psRun(ctx, "", append([]string{"pub", "-t", topic, "-m", "x", "--connect-timeout", "5s"}, tc.args...)...)
				if r.code == 0 || !strings.Contains(r.err, tc.errSubstr) {
					t.Fatalf("exit %d stderr %q, want failure mentioning %q", r.code, r.err, tc.errSubstr)
				}
				return
			}
			sub := psRunAsync(ctx, append([]string{"sub", "-t", topic, "-C", "1"}, tc.args...)...)
			var pubErr string
			r := psPubUntil(t, sub, func() error {
				r := psRun(ctx, "", append([]string{"pub", "-t", topic, "-m", "secure"}, tc.args...)...)
				pubErr = r.err
				if r.code != 0 {
					return fmt.Errorf("exit %d: %s", r.code, r.err)
				}
				return nil
			})
			if r.code != 0 || r.out != "secure\n" {
				t.Fatalf("sub: %+v", r)
			}
			if !strings.Contains(pubErr, tc.errSubstr) {
				t.Fatalf("stderr %q lacks %q", pubErr, tc.errSubstr)
			}
		})
	}
}

// TestPubSubSOCKS5 goes through Debian's microsocks with proxy
// authentication, the password from $MOAT_PROXY_PASSWORD or (with a
// warning) from the URL.
func TestPubSubSOCKS5(t *testing.T) {
	bin, err := exec.LookPath("microsocks")
	if err != nil {
		t.Skip("microsocks not installed (apt-get install microsocks)")
	}
	port := psStartMoat(t, broker.Config{})
	socks := testutil.StartPeer(t, testutil.Peer{
		Name:  "microsocks",
		Ports: 1,
		Command: func(ports []int) *exec.Cmd {
			return exec.Command(bin, "-i", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-u", "px", "-P", "pxpass")
		},
	})
	pport := strconv.Itoa(socks.Ports[0])
	old := getenv
	getenv = func(k string) string {
		if k == proxyPasswordEnv {
			return "pxpass"
		}
		return ""
	}
	defer func() { getenv = old }()
	ctx := psTestCtx(t)
	sub := psRunAsync(ctx, "sub", "-h", "localhost", "-p", port, "--proxy", "socks5h://px@127.0.0.1:"+pport, "-t", "sx", "-C", "1")
	var pubErr string
	r := psPubUntil(t, sub, func() error {
		r := psRun(ctx, "", "pub", "-h", "127.0.0.1", "-p", port, "--proxy", "socks5://px:pxpass@127.0.0.1:"+pport, "-t", "sx", "-m", "via proxy")
		pubErr = r.err
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.err)
		}
		return nil
	})
	if r.code != 0 || r.out != "via proxy\n" {
		t.Fatalf("sub: %+v", r)
	}
	if !strings.Contains(pubErr, "proxy password on the command line") {
		t.Fatalf("no warning for a password in --proxy: %q", pubErr)
	}
	if r := psRun(ctx, "", "pub", "-h", "127.0.0.1", "-p", port, "--proxy", "socks5://px:wrong@127.0.0.1:"+pport, "-t", "sx", "-m", "x"); r.code == 0 || strings.Contains(r.err, "wrong") {
		t.Fatalf("wrong proxy password: %+v", r)
	}
}
