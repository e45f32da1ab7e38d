package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
)

// checkFor polls f until it returns nil or d passes.
func checkFor(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testPKI is a CA with a server certificate for 127.0.0.1/localhost and a
// client certificate, generated at test time.
type testPKI struct {
	dir                       string
	caFile, certFile, keyFile string // server
	clientCert, clientKey     string // client files
	pool                      *x509.CertPool
	client                    tls.Certificate
	serverTLS                 tls.Certificate
	caCert                    *x509.Certificate
	caKey                     *ecdsa.PrivateKey
	mu                        sync.Mutex
	serial                    int64
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Moat test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.serial = 1
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	p.caFile = p.write(t, "ca.pem", pemBlock("CERTIFICATE", der))
	p.certFile, p.keyFile, p.serverTLS = p.issue(t, "server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.clientCert, p.clientKey, p.client = p.issue(t, "client", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "device-1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func (p *testPKI) write(t testing.TB, name string, data []byte) string {
	t.Helper()
	f := filepath.Join(p.dir, name)
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (p *testPKI) issue(t testing.TB, name string, tmpl *x509.Certificate) (certFile, keyFile string, c tls.Certificate) {
	t.Helper()
	p.mu.Lock()
	p.serial++
	tmpl.SerialNumber = big.NewInt(p.serial)
	p.mu.Unlock()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM, keyPEM := pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kder)
	certFile = p.write(t, name+".pem", certPEM)
	keyFile = p.write(t, name+".key", keyPEM)
	c, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, c
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// mosquitto is a Debian mosquitto broker started for a test.
type mosquitto struct {
	tcp, tls, mtls, ws string // host:port of each listener
	pki                *testPKI
	log                *bytes.Buffer
}

// startMosquitto starts mosquitto with a plain, a TLS, a mutual TLS and a
// WebSocket listener on 127.0.0.1; it is killed when the test ends.
// extra is appended to the configuration.
func startMosquitto(t testing.TB, extra string) *mosquitto {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto not installed (apt-get install mosquitto)")
		}
	}
	p := newPKI(t)
	ports := [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}
	conf := fmt.Sprintf(`per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
listener %d 127.0.0.1
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
listener %d 127.0.0.1
protocol websockets
%s
`, ports[0], ports[1], p.caFile, p.certFile, p.keyFile, ports[2], p.caFile, p.certFile, p.keyFile, ports[3], extra)
	if os.Geteuid() == 0 {
		conf = "user root\n" + conf
	}
	cf := p.write(t, "mosquitto.conf", []byte(conf))
	m := &mosquitto{pki: p, log: &bytes.Buffer{}}
	addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
	m.tcp, m.tls, m.mtls, m.ws = addr(0), addr(1), addr(2), addr(3)
	cmd := exec.Command(bin, "-c", cf)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.log)
		}
	})
	checkFor(t, 10*time.Second, func() error {
		select {
		case <-done:
			t.Fatalf("mosquitto exited:\n%s", m.log)
		default:
		}
		for i := range ports {
			c, err := net.Dial("tcp", addr(i))
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	return m
}

// startMoat runs Moat's broker in-process on a 127.0.0.1 port and returns
// its address.
func startMoat(t testing.TB, cfg broker.Config) string {
	t.Helper()
	cfg.AllowAnonymous = true
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln, broker.ListenerConfig{}); close(done) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		cancel()
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// dial connects a client and closes it when the test ends.
func dial(t testing.TB, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial %v: %v", cfg.Servers, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv waits for the next message on c.Messages().
func recv(t testing.TB, c *Client) *Message {
	t.Helper()
	select {
	case m, ok := <-c.Messages():
		if !ok {
			t.Fatalf("message channel closed: %v", c.Err())
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return nil
}

// noMessage checks that no message arrives for a short while.
func noMessage(t testing.TB, c *Client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		t.Fatalf("unexpected message %q on %q", m.Payload, m.Topic)
	case <-time.After(d):
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}
