package listener

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/coder/websocket"
)

func TestConfigValidation(t *testing.T) {
	p := newTestPKI(t)
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{"zero value needs an address", Config{}, []string{"Address is required"}},
		{"tcp ok", Config{Address: "127.0.0.1:0"}, nil},
		{"bad address", Config{Address: "localhost"}, []string{"not host:port"}},
		{"tls without config", Config{Address: "127.0.0.1:0", Transport: TLS}, []string{"needs a TLS config"}},
		{"wss without config", Config{Address: "127.0.0.1:0", Transport: WebSocketTLS}, []string{"needs a TLS config"}},
		{"tls config on plain", Config{Address: "127.0.0.1:0", TLS: p.serverTLS()}, []string{"plain text"}},
		{"unknown transport", Config{Address: "127.0.0.1:0", Transport: 9}, []string{"unknown transport"}},
		{"proxy without trusted", Config{Address: "127.0.0.1:0", Proxy: &ProxyConfig{}}, []string{"trusted source"}},
		{"bad ws path", Config{Address: "127.0.0.1:0", Transport: WebSocket, WebSocket: WebSocketConfig{Path: "mqtt"}}, []string{"clean absolute path"}},
		{"bad origin", Config{Address: "127.0.0.1:0", Transport: WebSocket, WebSocket: WebSocketConfig{AllowedOrigins: []string{"[x"}}}, []string{"not a valid pattern"}},
		{"all problems at once", Config{Transport: TLS, MaxPending: -1, Proxy: &ProxyConfig{HeaderTimeout: -1}},
			[]string{"Address is required", "needs a TLS config", "MaxPending", "trusted source", "HeaderTimeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("expected an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "listener: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestParseTransport(t *testing.T) {
	for _, tr := range []Transport{TCP, TLS, WebSocket, WebSocketTLS} {
		got, err := ParseTransport(strings.ToUpper(tr.String()))
		if err != nil || got != tr {
			t.Errorf("ParseTransport(%q) = %v, %v", tr.String(), got, err)
		}
	}
	if _, err := ParseTransport("quic"); err == nil {
		t.Error("ParseTransport(quic) succeeded")
	}
}

func TestTCPEcho(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Name: "plain"})
	if l.Name() != "plain" || l.Transport() != TCP {
		t.Fatalf("Name/Transport = %q/%v", l.Name(), l.Transport())
	}
	ch := acceptAsync(l)
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	srv := waitAccept(t, ch)
	go io.Copy(srv, srv)

	msg := []byte("hello over tcp")
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q", got)
	}
	info := Info(srv)
	if info.Listener != "plain" || info.Transport != TCP || info.TLS != nil || info.Proxy != nil {
		t.Errorf("Info = %+v", info)
	}
	if info.RemoteAddr.String() != client.LocalAddr().String() {
		t.Errorf("RemoteAddr = %v, want %v", info.RemoteAddr, client.LocalAddr())
	}
	if _, ok := srv.(interface{ ConnectionState() tls.ConnectionState }); ok {
		t.Error("a plain TCP conn must not look like TLS")
	}
	srv.Close()
}

func TestDefaultName(t *testing.T) {
	l := listen(t, Config{Address: "127.0.0.1:0", Transport: WebSocket})
	if l.Name() != "ws/127.0.0.1:0" {
		t.Errorf("default name = %q", l.Name())
	}
}

// TestTLSAcceptDoesNotHandshake checks that a client that never sends its
// ClientHello does not hold up Accept, and that the broker runs the
// handshake itself with its own deadline.
func TestTLSAcceptDoesNotHandshake(t *testing.T) {
	testutil.CheckNoLeaks(t)
	p := newTestPKI(t)
	l := listen(t, Config{Name: "secure", Transport: TLS, TLS: p.serverTLS()})

	slow, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slowSrv := waitAccept(t, acceptAsync(l))
	tc, ok := slowSrv.(*tls.Conn)
	if !ok {
		t.Fatalf("TLS listener returned %T, want *tls.Conn", slowSrv)
	}
	if tc.ConnectionState().HandshakeComplete {
		t.Fatal("handshake ran inside Accept")
	}
	if Info(slowSrv).TLS != nil {
		t.Error("Info reports TLS state before the handshake")
	}

	// A real client is accepted while the slow one is still silent.
	ch := acceptAsync(l)
	clientErr := make(chan error, 1)
	go func() {
		c, err := tls.Dial("tcp", l.Addr().String(), p.clientTLS(true))
		if err != nil {
			clientErr <- err
			return
		}
		defer c.Close()
		_, err = c.Write([]byte("ping"))
		if err == nil {
			_, err = io.ReadFull(c, make([]byte, 4))
		}
		clientErr <- err
	}()
	srv := waitAccept(t, ch).(*tls.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil {
		t.Fatal(err)
	}
	srv.Write(buf)
	if err := <-clientErr; err != nil {
		t.Fatal(err)
	}
	info := Info(srv)
	if info.Listener != "secure" || info.Transport != TLS || info.TLS == nil {
		t.Fatalf("Info = %+v", info)
	}
	if len(info.TLS.PeerCertificates) == 0 || info.TLS.PeerCertificates[0].Subject.CommonName != "device-0001" {
		t.Errorf("client certificate not visible: %+v", info.TLS.PeerCertificates)
	}

	// The broker's pre-CONNECT deadline ends the silent client.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := tc.HandshakeContext(ctx2); err == nil {
		t.Fatal("handshake with a silent client succeeded")
	}
	tc.Close()
	srv.Close()
}

func TestCloseUnblocksAcceptAndLeavesNoGoroutines(t *testing.T) {
	p := newTestPKI(t)
	configs := []Config{
		{Transport: TCP},
		{Transport: TLS, TLS: p.serverTLS()},
		{Transport: WebSocket},
		{Transport: WebSocketTLS, TLS: p.serverTLS()},
		{Transport: TCP, Proxy: &ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
		{Transport: WebSocketTLS, TLS: p.serverTLS(), Proxy: &ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}},
	}
	for _, cfg := range configs {
		name := cfg.Transport.String()
		if cfg.Proxy != nil {
			name += "+proxy"
		}
		t.Run(name, func(t *testing.T) {
			testutil.CheckNoLeaks(t)
			cfg.Address = "127.0.0.1:0"
			cfg.Logger = testLogger(t)
			l, err := Listen(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Silent clients: pending in PROXY / HTTP phases, or queued.
			var clients []net.Conn
			for range 3 {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, c)
			}
			if cfg.Transport == TCP && cfg.Proxy == nil {
				c := waitAccept(t, acceptAsync(l))
				c.Close()
			}
			ch := acceptAsync(l)
			time.Sleep(20 * time.Millisecond) // let the clients reach the listener's goroutines
			if err := l.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			select {
			case r := <-ch:
				if r.err == nil {
					r.c.Close()
					// A queued TCP connection may win the race; the next Accept must fail.
					if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
						t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
					}
				} else if !errors.Is(r.err, net.ErrClosed) {
					t.Fatalf("Accept after Close = %v, want net.ErrClosed", r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock Accept")
			}
			if err := l.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			for _, c := range clients {
				if cfg.Transport != TCP || cfg.Proxy != nil {
					expectClosed(t, c)
				}
				c.Close()
			}
		})
	}
}

// TestSeveralListeners runs one listener per transport side by side and
// checks each connection reports the listener it came through.
func TestSeveralListeners(t *testing.T) {
	testutil.CheckNoLeaks(t)
	p := newTestPKI(t)
	ls := map[string]*Listener{
		"mqtt":  listen(t, Config{Name: "mqtt", Transport: TCP}),
		"mqtts": listen(t, Config{Name: "mqtts", Transport: TLS, TLS: p.serverTLS()}),
		"ws":    listen(t, Config{Name: "ws", Transport: WebSocket}),
		"wss":   listen(t, Config{Name: "wss", Transport: WebSocketTLS, TLS: p.serverTLS()}),
	}
	for name, l := range ls {
		ch := acceptAsync(l)
		var client io.Closer
		switch l.Transport() {
		case TCP:
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			client = c
		case TLS:
			c, err := net.Dial("tcp", l.Addr().String()) // handshake left to the test below
			if err != nil {
				t.Fatal(err)
			}
			client = c
		default:
			opts := &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPClient: tlsHTTPClient(p.clientTLS(false))}
			c, _, err := wsDial(t, l, "/", opts)
			if err != nil {
				t.Fatal(err)
			}
			client = closerFunc(func() error { return c.CloseNow() })
		}
		srv := waitAccept(t, ch)
		if got := Info(srv); got.Listener != name || got.Transport != l.Transport() {
			t.Errorf("%s: Info = %q/%v", name, got.Listener, got.Transport)
		}
		client.Close()
		srv.Close()
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// TestPlainWarningOnlyOnNetwork: the INSECURE warning of a plain-text
// listener is for addresses other hosts can reach; a loopback listener is
// not reported (docs/configuration.md).
func TestPlainWarningOnlyOnNetwork(t *testing.T) {
	var buf bytes.Buffer
	listen(t, Config{Name: "local", Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if strings.Contains(buf.String(), "INSECURE") {
		t.Errorf("a loopback listener was reported: %s", buf.String())
	}
	for _, tc := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, false},
		{&net.TCPAddr{IP: net.IPv6loopback}, false},
		{&net.UnixAddr{Name: "/run/moat.sock", Net: "unix"}, false},
		{&net.TCPAddr{IP: net.IPv4zero}, true},
		{&net.TCPAddr{IP: net.IPv6unspecified}, true},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}, true},
	} {
		if got := onNetwork(tc.addr); got != tc.want {
			t.Errorf("onNetwork(%v) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
