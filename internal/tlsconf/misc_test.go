package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

func TestCAPath(t *testing.T) {
	e := newEnv(t, testpki.P256)
	ca2 := testpki.NewRoot(t, "Second CA", testpki.P256)
	ca3 := testpki.NewRoot(t, "Third CA", testpki.P256)
	capath := filepath.Join(e.dir, "certs")
	if err := os.Mkdir(capath, 0o755); err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, filepath.Join(capath, "9d66eef0.0"), e.ca.PEM())   // c_rehash name
	testpki.WriteFile(t, filepath.Join(capath, "second.crt"), ca2.Cert.Raw) // DER .crt
	testpki.WriteFile(t, filepath.Join(capath, "README"), []byte("not a cert"))
	testpki.WriteFile(t, filepath.Join(capath, "9d66eef0.r0"), []byte("a CRL slot, ignored"))
	e.cfg.CAFile = ""
	e.cfg.CAPath = capath
	m := e.manager(t)
	srv := serve(t, m)
	for _, tt := range []struct {
		ca *testpki.Cert
		ok bool
	}{{e.ca, true}, {ca2, true}, {ca3, false}} {
		dev := tt.ca.Issue(t, testpki.Options{CN: "dev"})
		_, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
		if (err == nil) != tt.ok {
			t.Errorf("device of %s: err=%v, want ok=%v", tt.ca.Cert.Subject.CommonName, err, tt.ok)
		}
		srv.nextResult(t)
	}
	// A CA added to the directory is picked up by the watcher.
	testpki.WriteFile(t, filepath.Join(capath, "third.pem"), ca3.PEM())
	testutil.WaitFor(t, "reload", 5*time.Second, func() bool { return contains(e.logs.String(), "cas=3") })
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, ca3.Issue(t, testpki.Options{CN: "dev3"}))); err != nil {
		t.Fatalf("device of the added CA refused: %v", err)
	}

	empty := t.TempDir()
	e.cfg.CAPath = empty
	if _, err := New(e.cfg); err == nil || !contains(err.Error(), "holds no CA certificate") {
		t.Fatalf("empty capath: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	e := newEnv(t, testpki.P256)
	m := e.manager(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	silent, err := net.Dial("tcp", ln.Addr().String()) // never sends a ClientHello
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	err = Handshake(context.Background(), tls.Server(c, m.TLSConfig()), 100*time.Millisecond)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Handshake = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("handshake timeout took %v", d)
	}
}

func TestWatchAfterClose(t *testing.T) {
	e := newEnv(t, testpki.P256)
	m := e.manager(t)
	m.Close()
	if _, err := m.Watch(nil, func(Reason) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
}
