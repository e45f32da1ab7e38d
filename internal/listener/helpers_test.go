package listener

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// testPKI is a CA from the shared test PKI with a server certificate for
// 127.0.0.1 and localhost and one client certificate.
type testPKI struct {
	caPool     *x509.CertPool
	caFile     string // PEM, for external clients
	server     tls.Certificate
	client     tls.Certificate
	clientCert *x509.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca := testpki.NewRoot(t, "listener test CA", testpki.P256)
	client := ca.Issue(t, testpki.Options{CN: "device-0001", EKU: testpki.ClientAuth})
	return &testPKI{
		caPool:     ca.Pool(),
		caFile:     ca.WritePEM(t, filepath.Join(t.TempDir(), "ca.pem")),
		server:     ca.Issue(t, testpki.ServerOptions()).TLS(),
		client:     client.TLS(),
		clientCert: client.Cert,
	}
}

// serverTLS requests (but does not require) a client certificate.
func (p *testPKI) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.caPool,
		MinVersion:   tls.VersionTLS12,
	}
}

func (p *testPKI) clientTLS(withCert bool) *tls.Config {
	c := &tls.Config{RootCAs: p.caPool, ServerName: "localhost"}
	if withCert {
		c.Certificates = []tls.Certificate{p.client}
	}
	return c
}

// listen opens a listener closed at the end of the test.
func listen(t testing.TB, cfg Config) *Listener {
	t.Helper()
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	l, err := Listen(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type acceptResult struct {
	c   net.Conn
	err error
}

// acceptAsync runs one Accept in the background.
func acceptAsync(l net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

func waitAccept(t testing.TB, ch <-chan acceptResult) net.Conn {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return")
	}
	return nil
}

// expectClosed reads from c until EOF or error within the timeout, failing
// if the peer keeps it open.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection was not closed by the listener")
	}
}

// fakeMQTT plays the smallest broker: it reads one CONNECT, answers CONNACK
// (success), then drains packets until DISCONNECT or EOF. It returns the
// CONNECT packet's protocol name.
func fakeMQTT(c net.Conn) (string, error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	typ, body, err := readPacket(r)
	if err != nil {
		return "", fmt.Errorf("read CONNECT: %w", err)
	}
	if typ>>4 != 1 {
		return "", fmt.Errorf("first packet type %#x, want CONNECT", typ)
	}
	if len(body) < 2 {
		return "", errors.New("short CONNECT")
	}
	n := int(body[0])<<8 | int(body[1])
	if len(body) < 2+n {
		return "", errors.New("short CONNECT protocol name")
	}
	proto := string(body[2 : 2+n])
	if _, err := c.Write([]byte{0x20, 0x02, 0x00, 0x00}); err != nil {
		return proto, fmt.Errorf("write CONNACK: %w", err)
	}
	for {
		typ, _, err := readPacket(r)
		if err != nil {
			return proto, nil // client went away
		}
		switch typ >> 4 {
		case 12: // PINGREQ
			c.Write([]byte{0xd0, 0x00})
		case 14: // DISCONNECT
			return proto, nil
		}
	}
}

func readPacket(r *bufio.Reader) (byte, []byte, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var n, shift int
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return typ, body, err
}

// connectPacket is a minimal MQTT 3.1.1 CONNECT for client ID "c".
var connectPacket = []byte{0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, 'c'}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// runCmd runs an external peer with a timeout, reporting its output on
// failure.
func runCmd(t testing.TB, name string, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", filepath.Base(name), err, tail(string(out)))
	}
	return nil
}
