package cli

// moat sub and moat pub against a broker that refuses them: a refusal that
// retrying cannot cure (revoked certificate, refused CONNECT) ends the
// command with a non-zero status and the reason; a transient failure is
// retried with a message on stderr each time.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// psRunLive runs the command in a goroutine with its output readable
// while it runs.
func psRunLive(ctx context.Context, args ...string) (stdout, stderr *testutil.Buffer, done <-chan psResult) {
	stdout, stderr = &testutil.Buffer{}, &testutil.Buffer{}
	ch := make(chan psResult, 1)
	go func() {
		code := Main(ctx, args, Stdio{In: strings.NewReader(""), Out: stdout, Err: stderr})
		ch <- psResult{code, stdout.String(), stderr.String()}
	}()
	return stdout, stderr, ch
}

func psWait(t *testing.T, done <-chan psResult, d time.Duration) psResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(d):
		t.Fatalf("command did not finish within %v", d)
	}
	return psResult{}
}

// startMutualTLSMoat runs `moat serve` with a mutual-TLS listener and the
// built-in CA, and issues device certificates dev-1 and dev-2. It returns
// the port, the CA file and the directory holding the certificates.
func startMutualTLSMoat(t *testing.T) (port, caFile, dir string) {
	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: mqtts
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
data_dir: data
persistence:
  enabled: false
acl:
  rules:  # what the tests publish and read; the refusals under test are not the policy's
    - {name: tests, effect: allow, subjects: {anonymous: false}, actions: [publish, subscribe, receive], topics: ["rev/#", "hint/#"]}
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	ca := filepath.Join(dir, "data", "ca")
	moatCmd(t, dir, "ca", "issue", "device", "dev-1", "--dir", ca, "--out", "dev-1")
	return strconv.Itoa(p.port(0)), filepath.Join(ca, "ca.pem"), dir
}

// TestSubExitsWhenCertificateRevoked revokes the certificate of a running
// moat sub: the broker ends the session and refuses the handshake, and
// moat sub exits with status 1 and the reason instead of retrying forever.
// moat pub with the revoked certificate fails the same way.
func TestSubExitsWhenCertificateRevoked(t *testing.T) {
	t.Parallel()
	port, caFile, dir := startMutualTLSMoat(t)
	ctx := psTestCtx(t)
	f := func(n string) string { return filepath.Join(dir, n) }
	tlsArgs := []string{"-h", "localhost", "-p", port, "--cafile", caFile, "--cert", f("dev-1.pem"), "--key", f("dev-1.key")}

	stdout, _, done := psRunLive(ctx, append([]string{"sub", "-t", "rev/#"}, tlsArgs...)...)
	// Wait until the subscriber is in: a message it prints proves it.
	testutil.CheckFor(t, 15*time.Second, func() error {
		if strings.Contains(stdout.String(), "hello") {
			return nil
		}
		return psMoatPub(ctx, append([]string{"-t", "rev/x", "-m", "hello"}, tlsArgs...)...)()
	})
	moatCmd(t, dir, "ca", "revoke", "dev-1.pem", "--dir", filepath.Join(dir, "data", "ca"), "--reason", "keyCompromise")
	r := psWait(t, done, 20*time.Second)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", r.code, r.err)
	}
	if !strings.Contains(r.err, "not retrying") || !strings.Contains(r.err, "certificate") || !strings.Contains(r.err, "hint:") {
		t.Fatalf("stderr lacks the reason and hint:\n%s", r.err)
	}
	t.Logf("stderr:\n%s", r.err)

	pr := psRun(ctx, "", append([]string{"pub", "-t", "rev/x", "-m", "x"}, tlsArgs...)...)
	if pr.code != 1 || !strings.Contains(pr.err, "hint:") || !strings.Contains(pr.err, "certificate") {
		t.Fatalf("pub with a revoked certificate: exit %d, stderr %q", pr.code, pr.err)
	}
}

// TestSubExitsWhenConnectRefused lets a subscriber in once, takes its
// session over once it is subscribed, and refuses its reconnection with
// CONNACK 0x87: moat sub exits with status 1 and the broker's reason.
func TestSubExitsWhenConnectRefused(t *testing.T) {
	t.Parallel()
	var connects atomic.Int32
	auth := broker.AuthenticatorFunc(func(ctx context.Context, req *broker.ConnectRequest) broker.AuthResult {
		// The subscriber and the test's takeover client get in; every
		// later attempt with their client ID is refused.
		if req.Client.ClientID != "refused-sub" || connects.Add(1) <= 2 {
			return broker.AuthResult{Allow: true}
		}
		return broker.AuthResult{Code: packet.NotAuthorized, Reason: "test: account disabled"}
	})
	port := psStartMoat(t, broker.Config{Authenticator: auth})
	ctx := psTestCtx(t)
	// A retained message the subscriber prints once its subscription is
	// acknowledged (moat sub reads messages only after SUBACK): a
	// takeover before that would end the subscribe step instead.
	pub, err := client.Dial(ctx, client.Config{Servers: []string{"127.0.0.1:" + port}, ClientID: "retainer"})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, &client.Message{Topic: "a", Payload: []byte("subscribed"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	stdout, stderr, done := psRunLive(ctx, "sub", "-h", "127.0.0.1", "-p", port, "-i", "refused-sub", "-t", "a")
	testutil.WaitFor(t, "the subscriber to print the retained message", 10*time.Second, func() bool {
		return strings.Contains(stdout.String(), "subscribed")
	})
	c, err := client.Dial(ctx, client.Config{Servers: []string{"127.0.0.1:" + port}, ClientID: "refused-sub"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := psWait(t, done, 15*time.Second)
	if r.code != 1 || !strings.Contains(r.err, "not retrying") || !strings.Contains(r.err, "account disabled") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.err)
	}
	if strings.Contains(stderr.String(), "retrying\n") {
		t.Fatalf("a permanent refusal was retried:\n%s", r.err)
	}
}

// TestSubRetriesTransientFailures stops the broker under a subscriber: the
// reconnection fails with "connection refused", which moat sub reports on
// stderr and retries.
func TestSubRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	b := brokertest.Start(t, broker.Config{AllowAnonymous: true}, brokertest.Options{})
	srv, port := b.Server, b.Port()

	ctx, cancel := context.WithCancel(psTestCtx(t))
	_, stderr, done := psRunLive(ctx, "sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "a", "--connect-timeout", "2s")
	testutil.CheckFor(t, 10*time.Second, func() error {
		if srv.Stats().ClientsConnected < 1 {
			return errors.New("subscriber did not connect")
		}
		return nil
	})
	b.Stop()
	testutil.CheckFor(t, 15*time.Second, func() error {
		if s := stderr.String(); !strings.Contains(s, "reconnect attempt 1 failed") || !strings.Contains(s, "retrying") {
			return fmt.Errorf("no retry message on stderr: %q", s)
		}
		return nil
	})
	cancel()
	if r := psWait(t, done, 10*time.Second); r.code != 0 {
		t.Fatalf("exit %d after interrupt, stderr:\n%s", r.code, r.err)
	}
}

// TestPermanentConnectError classifies the errors of real connection
// attempts.
func TestPermanentConnectError(t *testing.T) {
	port := testutil.FreePort(t) // nothing listens
	ctx := psTestCtx(t)
	_, err := client.Dial(ctx, client.Config{Servers: []string{"127.0.0.1:" + strconv.Itoa(port)}})
	if err == nil || permanentConnectError(err) {
		t.Fatalf("connection refused %v: want a transient error", err)
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&client.ReasonError{Op: "connect", Code: packet.NotAuthorized}, true},
		{&client.ReasonError{Op: "connect", Code: packet.BadUsernameOrPassword}, true},
		{&client.ReasonError{Op: "connect", Code: packet.ServerBusy}, false},
		{&client.ReasonError{Op: "connect", Code: packet.ServerUnavailable}, false},
		{fmt.Errorf("x: %w", x509.UnknownAuthorityError{}), true},
		{context.DeadlineExceeded, false},
	} {
		if got := permanentConnectError(tc.err); got != tc.want {
			t.Errorf("permanentConnectError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestTLSConnectHints checks the hints on client-side TLS failures against
// Moat's broker: a broker certificate from a CA not given, and a broker
// that requires a client certificate when none is given.
func TestTLSConnectHints(t *testing.T) {
	t.Parallel()
	port, caFile, dir := startMutualTLSMoat(t)
	ctx := psTestCtx(t)
	f := func(n string) string { return filepath.Join(dir, n) }
	psNewCA(t, dir, "other-ca")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"other-ca", []string{"--cafile", f("other-ca.pem"), "--cert", f("dev-1.pem"), "--key", f("dev-1.key")},
			"hint: the broker's certificate is from a CA not given: pass --cafile with the broker's CA, e.g. moat-data/ca/ca.pem"},
		{"no-client-cert", []string{"--cafile", caFile},
			"hint: this broker requires a client certificate: pass --cert and --key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{{"pub", "-m", "x"}, {"sub", "-W", "5"}} {
				args := append(append(cmd, "-h", "localhost", "-p", port, "-t", "hint/x"), tc.args...)
				r := psRun(ctx, "", args...)
				if r.code != 1 || !strings.Contains(r.err, tc.want) {
					t.Fatalf("%s: exit %d, stderr %q, want %q", cmd[0], r.code, r.err, tc.want)
				}
			}
		})
	}
}
