package listener

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/coder/websocket"
)

func wsURL(l *Listener, path string) string {
	scheme := "ws://"
	if l.Transport() == WebSocketTLS {
		scheme = "wss://"
	}
	return scheme + l.Addr().String() + path
}

func wsDial(t testing.TB, l *Listener, path string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if opts == nil {
		opts = &websocket.DialOptions{Subprotocols: []string{"mqtt"}}
	}
	// Callers defer CloseNow: deferred calls run before the cleanup that
	// closes the server side, which then needs no close handshake.
	return websocket.Dial(ctx, wsURL(l, path), opts)
}

func tlsHTTPClient(cfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

// TestWebSocketByteStream checks [MQTT-6.0.0-2]: the receiver must not
// assume packets are aligned on WebSocket message boundaries.
func TestWebSocketByteStream(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Name: "ws", Transport: WebSocket})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	ctx := context.Background()

	// Two packets in one message, then one packet split over two messages.
	ping := []byte{0xc0, 0x00}
	if err := client.Write(ctx, websocket.MessageBinary, append(append([]byte{}, connectPacket...), ping...)); err != nil {
		t.Fatal(err)
	}
	if err := client.Write(ctx, websocket.MessageBinary, connectPacket[:5]); err != nil {
		t.Fatal(err)
	}
	if err := client.Write(ctx, websocket.MessageBinary, connectPacket[5:]); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, connectPacket...), ping...), connectPacket...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(srv, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("stream = %x, want %x", got, want)
	}

	// Each Write is one binary message.
	if _, err := srv.Write([]byte{0x20, 0x02, 0x00, 0x00}); err != nil {
		t.Fatal(err)
	}
	typ, msg, err := client.Read(ctx)
	if err != nil || typ != websocket.MessageBinary || !bytes.Equal(msg, []byte{0x20, 0x02, 0x00, 0x00}) {
		t.Fatalf("client read %v %x %v", typ, msg, err)
	}

	info := Info(srv)
	if info.Listener != "ws" || info.Transport != WebSocket || info.WebSocketSubprotocol != "mqtt" || info.WebSocketPath != "/mqtt" || info.TLS != nil {
		t.Errorf("Info = %+v", info)
	}
	if _, ok := srv.(interface{ ConnectionState() tls.ConnectionState }); ok {
		t.Error("a ws:// conn must not look like TLS")
	}

	// Close sends a normal closure.
	clientErr := make(chan error, 1)
	go func() { _, _, err := client.Read(ctx); clientErr <- err }()
	srv.Close()
	if err := <-clientErr; websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("client saw %v, want normal closure", err)
	}
}

func TestWebSocketSubprotocols(t *testing.T) {
	tests := []struct {
		name    string
		offered []string
		require bool
		want    string // negotiated; "!" means refused
	}{
		{"mqtt", []string{"mqtt"}, false, "mqtt"},
		{"legacy mqttv3.1", []string{"mqttv3.1"}, false, "mqttv3.1"},
		{"mqtt preferred", []string{"mqttv3.1", "mqtt"}, false, "mqtt"},
		{"none offered", nil, false, ""},
		{"none offered but required", nil, true, "!"},
		{"other protocol", []string{"chat"}, false, "!"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, Config{Transport: WebSocket, WebSocket: WebSocketConfig{RequireSubprotocol: tc.require}})
			ch := acceptAsync(l)
			c, resp, err := wsDial(t, l, "/", &websocket.DialOptions{Subprotocols: tc.offered})
			if c != nil {
				defer c.CloseNow()
			}
			if tc.want == "!" {
				if err == nil {
					t.Fatalf("upgrade succeeded with subprotocol %q", c.Subprotocol())
				}
				if resp == nil || resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("response %v, want 400", resp)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Subprotocol() != tc.want {
				t.Errorf("client negotiated %q, want %q", c.Subprotocol(), tc.want)
			}
			srv := waitAccept(t, ch)
			if got := srv.(*WebSocketConn).Subprotocol(); got != tc.want {
				t.Errorf("server negotiated %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWebSocketTextFrameRefused checks [MQTT-6.0.0-1]: a text frame closes
// the connection (status 1003, unsupported data).
func TestWebSocketTextFrameRefused(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Transport: WebSocket})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	ctx := context.Background()
	if err := client.Write(ctx, websocket.MessageText, []byte("not mqtt")); err != nil {
		t.Fatal(err)
	}
	clientErr := make(chan error, 1)
	go func() { _, _, err := client.Read(ctx); clientErr <- err }()
	if _, err := srv.Read(make([]byte, 16)); err == nil {
		t.Fatal("server read a text frame")
	}
	if err := <-clientErr; websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("client saw %v, want close status 1003", err)
	}
	srv.Close()
}

func TestWebSocketOversizedMessageRefused(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Transport: WebSocket, WebSocket: WebSocketConfig{MaxMessageSize: 1024}})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	ctx := context.Background()
	// At the limit is fine.
	if err := client.Write(ctx, websocket.MessageBinary, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(srv, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	// Over the limit, even when fragmented, closes with 1009.
	w, err := client.Writer(ctx, websocket.MessageBinary)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		w.Write(make([]byte, 512))
	}
	w.Close()
	if _, err := io.Copy(io.Discard, srv); err == nil {
		t.Fatal("server accepted an oversized message")
	}
	if _, _, err := client.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("client saw %v, want close status 1009", err)
	}
	srv.Close()
}

func TestWebSocketDefaultMessageLimit(t *testing.T) {
	// NetConn disables coder/websocket's read limit; ours must be back.
	l := listen(t, Config{Transport: WebSocket})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	ctx := context.Background()
	big := make([]byte, 1<<20) // a 1 MiB packet fits
	go client.Write(ctx, websocket.MessageBinary, big)
	if _, err := io.ReadFull(srv, make([]byte, len(big))); err != nil {
		t.Fatal(err)
	}
	go client.Write(ctx, websocket.MessageBinary, make([]byte, DefaultWebSocketMaxMessageSize+1))
	if _, err := io.Copy(io.Discard, srv); err == nil {
		t.Fatal("server accepted a message over the default limit")
	}
}

func TestWebSocketPathAndOrigin(t *testing.T) {
	l := listen(t, Config{Transport: WebSocket, WebSocket: WebSocketConfig{
		Path:           "/mqtt",
		AllowedOrigins: []string{"app.example.com"},
	}})
	tests := []struct {
		name, path, origin string
		status             int // 0: upgrade succeeds
	}{
		{"configured path", "/mqtt", "", 0},
		{"other path", "/other", "", http.StatusNotFound},
		{"allowed origin", "/mqtt", "https://app.example.com", 0},
		{"origin equal to host", "/mqtt", "http://" + l.Addr().String(), 0},
		{"foreign origin", "/mqtt", "https://evil.example", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			if tc.status == 0 {
				ch := acceptAsync(l)
				wc, _, err := wsDial(t, l, tc.path, &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPHeader: h})
				if err != nil {
					t.Fatal(err)
				}
				defer wc.CloseNow()
				waitAccept(t, ch)
				return
			}
			_, resp, err := wsDial(t, l, tc.path, &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPHeader: h})
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("err=%v resp=%v, want status %d", err, resp, tc.status)
			}
		})
	}
}

func TestWebSocketAnyOriginByDefault(t *testing.T) {
	l := listen(t, Config{Transport: WebSocket})
	ch := acceptAsync(l)
	h := http.Header{"Origin": []string{"https://elsewhere.example"}}
	wc, _, err := wsDial(t, l, "/", &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.CloseNow()
	waitAccept(t, ch)
}

// TestWebSocketSlowClient: a client that connects and never sends its
// upgrade request neither blocks Accept nor stays past UpgradeTimeout.
func TestWebSocketSlowClient(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Transport: WebSocket, WebSocket: WebSocketConfig{UpgradeTimeout: 300 * time.Millisecond}})
	slow, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// Half a request line: the HTTP server waits for the rest.
	slow.Write([]byte("GET / HT"))

	ch := acceptAsync(l)
	wc, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.CloseNow()
	srvConn := waitAccept(t, ch)
	wc.CloseNow()
	srvConn.Close()
	start := time.Now()
	expectClosed(t, slow)
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("slow client closed after %v", d)
	}
}

func TestWebSocketMaxPending(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Transport: WebSocket, MaxPending: 1})
	slow, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if len(l.base.pending) != 1 {
			return errors.New("slow client not pending yet")
		}
		return nil
	})
	over, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	expectClosed(t, over)

	slow.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if len(l.base.pending) != 0 {
			return errors.New("slot not released")
		}
		return nil
	})
	ch := acceptAsync(l)
	wc, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.CloseNow()
	srvConn := waitAccept(t, ch)
	wc.CloseNow()
	srvConn.Close()
	if n := len(l.base.pending); n != 0 {
		t.Errorf("%d slots held after handing out the connection", n)
	}
}

func TestWebSocketReadDeadlineIsTimeout(t *testing.T) {
	l := listen(t, Config{Transport: WebSocket})
	ch := acceptAsync(l)
	wc, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.CloseNow()
	srv := waitAccept(t, ch)
	srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = srv.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after deadline = %v, want a timeout", err)
	}
}

func TestWebSocketCloseWithUnacceptedUpgrade(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l, err := Listen(context.Background(), Config{Address: "127.0.0.1:0", Transport: WebSocket, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Upgrade completes, but nobody calls Accept.
	c, _, err := wsDial(t, l, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.Read(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client read %v; want the listener to close it", err)
	}
}

func TestSecureWebSocket(t *testing.T) {
	testutil.CheckNoLeaks(t)
	p := newTestPKI(t)
	srvTLS := p.serverTLS()
	srvTLS.NextProtos = []string{"mqtt"} // must not break wss (ALPN http/1.1)
	l := listen(t, Config{Name: "wss", Transport: WebSocketTLS, TLS: srvTLS})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/mqtt", &websocket.DialOptions{
		Subprotocols: []string{"mqtt"},
		HTTPClient:   tlsHTTPClient(p.clientTLS(true)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	cs, ok := srv.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		t.Fatalf("%T has no ConnectionState", srv)
	}
	st := cs.ConnectionState()
	if !st.HandshakeComplete || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "device-0001" {
		t.Fatalf("TLS state = %+v", st)
	}
	if _, ok := srv.(interface{ HandshakeContext(context.Context) error }); ok {
		t.Error("wss conns arrive with the handshake done; they must not ask for one")
	}
	info := Info(srv)
	if info.Transport != WebSocketTLS || info.TLS == nil || info.Listener != "wss" || info.WebSocketSubprotocol != "mqtt" {
		t.Errorf("Info = %+v", info)
	}
	go io.Copy(srv, srv)
	ctx := context.Background()
	client.Write(ctx, websocket.MessageBinary, connectPacket)
	_, msg, err := client.Read(ctx)
	if err != nil || !bytes.Equal(msg, connectPacket) {
		t.Fatalf("echo %x %v", msg, err)
	}
	if srvTLS.NextProtos[0] != "mqtt" || len(srvTLS.NextProtos) != 1 {
		t.Error("Listen modified the caller's tls.Config")
	}
	srv.Close()
}

// TestWebSocketPahoPython connects Debian's python3-paho-mqtt over ws:// and
// wss:// to a fake broker that answers CONNACK.
func TestWebSocketPahoPython(t *testing.T) {
	py := testutil.NeedTool(t, "/usr/bin/python3")
	if err := runCmd(t, py, "-c", "import paho.mqtt.client"); err != nil {
		t.Skipf("python3-paho-mqtt not installed: %v", err)
	}
	p := newTestPKI(t)
	for _, tr := range []Transport{WebSocket, WebSocketTLS} {
		t.Run(tr.String(), func(t *testing.T) {
			cfg := Config{Transport: tr, WebSocket: WebSocketConfig{Path: "/mqtt"}}
			ca := ""
			if tr == WebSocketTLS {
				cfg.TLS = p.serverTLS()
				ca = p.caFile
			}
			l := listen(t, cfg)
			ch := acceptAsync(l)
			protoCh := make(chan string, 1)
			go func() {
				r := <-ch
				if r.err != nil {
					protoCh <- "accept: " + r.err.Error()
					return
				}
				proto, err := fakeMQTT(r.c)
				if err != nil {
					proto = err.Error()
				}
				protoCh <- proto
			}()
			_, port, _ := net.SplitHostPort(l.Addr().String())
			if err := runCmd(t, py, "-c", pahoScript, "127.0.0.1", port, "/mqtt", ca); err != nil {
				t.Fatal(err)
			}
			if proto := <-protoCh; proto != "MQTT" {
				t.Fatalf("fake broker: %s", proto)
			}
		})
	}
}

const pahoScript = `
import sys
import paho.mqtt.client as mqtt
host, port, path, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
result = {}
c = mqtt.Client(client_id="py-ws", transport="websockets")
c.ws_set_options(path=path)
if ca:
    c.tls_set(ca_certs=ca)
def on_connect(client, userdata, flags, rc):
    result["rc"] = rc
    client.disconnect()
c.on_connect = on_connect
c.connect(host, port, 30)
c.loop_forever(timeout=1.0)
if result.get("rc") != 0:
    print("connect result", result, file=sys.stderr)
    sys.exit(1)
`

// TestSecureWebSocketTLSErrorsReported: the handshakes a secure WebSocket
// listener's HTTP server refuses — a client that does not trust the
// server (curl with the system roots), a client speaking plain HTTP to
// it, a client certificate the server cannot verify — reach OnTLSError
// with their typed error, once each; a good handshake does not.
func TestSecureWebSocketTLSErrorsReported(t *testing.T) {
	testutil.CheckNoLeaks(t)
	curl := testutil.NeedTool(t, "curl")
	p := newTestPKI(t)
	var mu sync.Mutex
	var errs []error
	l := listen(t, Config{Name: "wss", Transport: WebSocketTLS, TLS: p.serverTLS(), OnTLSError: func(remote net.Addr, err error) {
		if remote == nil {
			t.Error("no remote address")
		}
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}})
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/mqtt", &websocket.DialOptions{Subprotocols: []string{"mqtt"}, HTTPClient: tlsHTTPClient(p.clientTLS(true))})
	if err != nil {
		t.Fatal(err)
	}
	client.CloseNow()
	waitAccept(t, ch).Close()

	addr := l.Addr().String()
	// curl does not know the test CA: it aborts the handshake with an alert.
	runCmd(t, curl, "-sS", "--max-time", "5", "https://"+addr+"/mqtt")
	// Plain HTTP to the TLS port.
	runCmd(t, curl, "-sS", "--max-time", "5", "http://"+addr+"/mqtt")
	// A certificate of another CA.
	other := newTestPKI(t)
	c := p.clientTLS(false)
	c.Certificates = []tls.Certificate{other.client}
	if tc, err := tls.Dial("tcp", addr, c); err == nil {
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Read(make([]byte, 1)) // TLS 1.3: the server's verdict arrives after the client's Finished
		tc.Close()
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) != 3 {
			return fmt.Errorf("%d errors reported: %v", len(errs), errs)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	var rh tls.RecordHeaderError
	var ve *tls.CertificateVerificationError
	// What the untrusting client's abort looks like to the server depends
	// on curl's TLS library (an alert, or a record it cannot read): any
	// error will do.
	t.Logf("untrusting client: %v", errs[0])
	if !errors.As(errs[1], &rh) {
		t.Errorf("plain HTTP: %v (%T), want a tls.RecordHeaderError", errs[1], errs[1])
	}
	if !errors.As(errs[2], &ve) {
		t.Errorf("unknown client certificate: %v (%T), want a *tls.CertificateVerificationError", errs[2], errs[2])
	}
}
