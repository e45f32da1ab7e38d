package listener

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

var (
	clientAddr   = &net.TCPAddr{IP: net.ParseIP("203.0.113.7").To4(), Port: 40000}
	frontendAddr = &net.TCPAddr{IP: net.ParseIP("198.51.100.1").To4(), Port: 8883}
	loopbackOnly = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
)

func proxyHeader(t testing.TB, version byte, tlvs ...proxyproto.TLV) []byte {
	t.Helper()
	h := &proxyproto.Header{
		Version:           version,
		Command:           proxyproto.PROXY,
		TransportProtocol: proxyproto.TCPv4,
		SourceAddr:        clientAddr,
		DestinationAddr:   frontendAddr,
	}
	if len(tlvs) > 0 {
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sslTLV(t testing.TB, ssl tlvparse.PP2SSL) proxyproto.TLV {
	t.Helper()
	tlv, err := ssl.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return tlv
}

// dialFrom connects from the given loopback source address (127.0.0.2 is
// "untrusted" when only 127.0.0.1 is trusted).
func dialFrom(t testing.TB, l *Listener, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestProxyHeaders(t *testing.T) {
	p := newTestPKI(t)
	const (
		bSSL  = tlvparse.PP2_BITFIELD_CLIENT_SSL
		bConn = tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN
		bSess = tlvparse.PP2_BITFIELD_CLIENT_CERT_SESS
	)
	version := proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.3")}
	cn := proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("device-0001")}
	cert := proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CLIENT_CERT, Value: p.clientCert.Raw}
	tests := []struct {
		name         string
		version      byte
		tlvs         []proxyproto.TLV
		refused      bool
		wantTLS      bool
		wantVerified bool
		wantCert     bool
	}{
		{name: "v1", version: 1},
		{name: "v2 no TLVs", version: 2},
		{name: "v2 HAProxy ssl+cn verified", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn | bSess, TLV: []proxyproto.TLV{version, cn}}),
			{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("mqtt.example.com")},
		}, wantTLS: true, wantVerified: true},
		{name: "v2 client certificate (Ghostunnel tls-full)", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, TLV: []proxyproto.TLV{version, cn, cert}}),
		}, wantTLS: true, wantVerified: true, wantCert: true},
		{name: "v2 certificate that failed verification", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, Verify: 20, TLV: []proxyproto.TLV{version, cn}}),
		}, wantTLS: true},
		{name: "v2 no certificate yet verify=0 (HAProxy default)", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL, TLV: []proxyproto.TLV{version}}),
		}, wantTLS: true},
		{name: "v2 CN disagrees with certificate", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, TLV: []proxyproto.TLV{version,
				{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("someone-else")}, cert}}),
		}, refused: true},
		{name: "v2 SSL TLV without version", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, TLV: []proxyproto.TLV{cn}}),
		}, refused: true},
		{name: "v2 two SSL TLVs", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL, Verify: 1, TLV: []proxyproto.TLV{version}}),
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, TLV: []proxyproto.TLV{version, cn}}),
		}, refused: true},
		{name: "v2 garbage certificate", version: 2, tlvs: []proxyproto.TLV{
			sslTLV(t, tlvparse.PP2SSL{Client: bSSL | bConn, TLV: []proxyproto.TLV{version,
				{Type: proxyproto.PP2_SUBTYPE_SSL_CLIENT_CERT, Value: []byte{0x30, 0x03, 0x01}}}}),
		}, refused: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckNoLeaks(t)
			l := listen(t, Config{Name: "behind-lb", Proxy: &ProxyConfig{Trusted: loopbackOnly}})
			ch := acceptAsync(l)
			c := dialFrom(t, l, "127.0.0.1")
			// Header and first MQTT bytes in one segment: the bytes after
			// the header must not be lost.
			if _, err := c.Write(append(proxyHeader(t, tc.version, tc.tlvs...), connectPacket...)); err != nil {
				t.Fatal(err)
			}
			if tc.refused {
				expectClosed(t, c)
				l.Close()
				if r := <-ch; r.err == nil {
					t.Fatal("refused connection was accepted")
				}
				return
			}
			srv := waitAccept(t, ch)
			got := make([]byte, len(connectPacket))
			if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, connectPacket) {
				t.Fatalf("read %x %v", got, err)
			}
			if srv.RemoteAddr().String() != clientAddr.String() || srv.LocalAddr().String() != frontendAddr.String() {
				t.Errorf("addresses %v -> %v", srv.RemoteAddr(), srv.LocalAddr())
			}
			info := Info(srv)
			if info.Proxy == nil || info.Proxy.Version != int(tc.version) || info.Listener != "behind-lb" {
				t.Fatalf("Info = %+v", info)
			}
			if info.PeerAddr.String() != c.LocalAddr().String() {
				t.Errorf("PeerAddr = %v, want the balancer %v", info.PeerAddr, c.LocalAddr())
			}
			pt, ok := srv.(interface {
				ProxyTLS() (*ProxyTLSInfo, bool)
			}).ProxyTLS()
			if ok != tc.wantTLS || (info.ProxyTLS != nil) != tc.wantTLS {
				t.Fatalf("ProxyTLS present = %v, want %v", ok, tc.wantTLS)
			}
			if !ok {
				return
			}
			if pt.Verified() != tc.wantVerified {
				t.Errorf("Verified = %v, want %v (%+v)", pt.Verified(), tc.wantVerified, pt)
			}
			if pt.Version != "TLSv1.3" {
				t.Errorf("Version = %q", pt.Version)
			}
			if (pt.ClientCertificate != nil) != tc.wantCert {
				t.Errorf("certificate present = %v, want %v", pt.ClientCertificate != nil, tc.wantCert)
			}
			if tc.wantCert && !pt.ClientCertificate.Equal(p.clientCert) {
				t.Error("certificate differs from the one sent")
			}
		})
	}
}

func TestProxyLocalCommand(t *testing.T) {
	l := listen(t, Config{Proxy: &ProxyConfig{Trusted: loopbackOnly}})
	ch := acceptAsync(l)
	c := dialFrom(t, l, "127.0.0.1")
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	c.Write(b)
	srv := waitAccept(t, ch)
	if srv.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("LOCAL: RemoteAddr = %v, want the peer %v", srv.RemoteAddr(), c.LocalAddr())
	}
	if pi := Info(srv).Proxy; pi == nil || !pi.Local {
		t.Errorf("Proxy = %+v", pi)
	}
}

func TestProxyUntrustedRefused(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Proxy: &ProxyConfig{Trusted: loopbackOnly}})
	ch := acceptAsync(l)
	// An untrusted source cannot spoof its address, with or without header.
	for _, payload := range [][]byte{proxyHeader(t, 2), connectPacket} {
		bad := dialFrom(t, l, "127.0.0.2")
		bad.Write(payload)
		expectClosed(t, bad)
	}
	good := dialFrom(t, l, "127.0.0.1")
	good.Write(proxyHeader(t, 1))
	srv := waitAccept(t, ch)
	if srv.RemoteAddr().String() != clientAddr.String() {
		t.Errorf("accepted %v, want the trusted connection", srv.RemoteAddr())
	}
}

func TestProxyPassUntrusted(t *testing.T) {
	l := listen(t, Config{Proxy: &ProxyConfig{Trusted: loopbackOnly, Untrusted: PassUntrusted}})
	ch := acceptAsync(l)
	c := dialFrom(t, l, "127.0.0.2")
	// A header from an untrusted source is not interpreted: it reaches the
	// broker as bytes, which the MQTT decoder rejects.
	hdr := proxyHeader(t, 1)
	c.Write(hdr)
	srv := waitAccept(t, ch)
	if srv.RemoteAddr().String() != c.LocalAddr().String() || Info(srv).Proxy != nil {
		t.Errorf("untrusted conn: RemoteAddr %v, Proxy %+v", srv.RemoteAddr(), Info(srv).Proxy)
	}
	got := make([]byte, len(hdr))
	if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, hdr) {
		t.Fatalf("read %q %v", got, err)
	}
}

func TestProxyHeaderRequiredAndTimed(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Proxy: &ProxyConfig{Trusted: loopbackOnly, HeaderTimeout: 200 * time.Millisecond}})
	ch := acceptAsync(l)
	// A trusted source that sends MQTT without a header is refused.
	noHeader := dialFrom(t, l, "127.0.0.1")
	noHeader.Write(connectPacket)
	expectClosed(t, noHeader)
	// A silent one neither blocks Accept nor outlives the header timeout.
	silent := dialFrom(t, l, "127.0.0.1")
	partial := dialFrom(t, l, "127.0.0.1")
	partial.Write([]byte("PROXY TCP4 203.0"))
	good := dialFrom(t, l, "127.0.0.1")
	good.Write(proxyHeader(t, 2))
	waitAccept(t, ch)
	start := time.Now()
	expectClosed(t, silent)
	expectClosed(t, partial)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("header timeout took %v", d)
	}
}

// TestProxyThenTLS: the balancer passes TCP through (PROXY header first) and
// the broker terminates TLS.
func TestProxyThenTLS(t *testing.T) {
	testutil.CheckNoLeaks(t)
	p := newTestPKI(t)
	l := listen(t, Config{Transport: TLS, TLS: p.serverTLS(), Proxy: &ProxyConfig{Trusted: loopbackOnly}})
	ch := acceptAsync(l)
	raw := dialFrom(t, l, "127.0.0.1")
	raw.Write(proxyHeader(t, 2))
	errc := make(chan error, 1)
	go func() {
		c := tls.Client(raw, p.clientTLS(true))
		err := c.Handshake()
		if err == nil {
			_, err = c.Write(connectPacket)
		}
		errc <- err
	}()
	srv := waitAccept(t, ch).(*tls.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	io.ReadFull(srv, make([]byte, len(connectPacket)))
	info := Info(srv)
	if info.RemoteAddr.String() != clientAddr.String() || info.TLS == nil || info.Proxy == nil || info.Transport != TLS {
		t.Fatalf("Info = %+v", info)
	}
	if info.TLS.PeerCertificates[0].Subject.CommonName != "device-0001" {
		t.Error("client certificate missing")
	}
	srv.Close()
}

// TestProxyThenWebSocket: a balancer that terminated TLS sends a PROXY v2
// header with the SSL TLV, then the WebSocket upgrade in clear.
func TestProxyThenWebSocket(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Transport: WebSocket, Proxy: &ProxyConfig{Trusted: loopbackOnly}})
	hdr := proxyHeader(t, 2, sslTLV(t, tlvparse.PP2SSL{
		Client: tlvparse.PP2_BITFIELD_CLIENT_SSL | tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN,
		TLV: []proxyproto.TLV{
			{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.2")},
			{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("device-0042")},
		},
	}))
	transport := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(hdr); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}}
	defer transport.CloseIdleConnections()
	ch := acceptAsync(l)
	client, _, err := wsDial(t, l, "/mqtt", &websocket.DialOptions{
		Subprotocols: []string{"mqtt"},
		HTTPClient:   &http.Client{Transport: transport},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseNow()
	srv := waitAccept(t, ch)
	if srv.RemoteAddr().String() != clientAddr.String() {
		t.Errorf("RemoteAddr = %v", srv.RemoteAddr())
	}
	pt, ok := srv.(interface {
		ProxyTLS() (*ProxyTLSInfo, bool)
	}).ProxyTLS()
	if !ok || !pt.Verified() || pt.CommonName != "device-0042" {
		t.Fatalf("ProxyTLS = %+v, %v", pt, ok)
	}
	info := Info(srv)
	if info.ProxyTLS == nil || info.Transport != WebSocket || info.WebSocketSubprotocol != "mqtt" {
		t.Errorf("Info = %+v", info)
	}
	if _, ok := srv.(interface{ ConnectionState() tls.ConnectionState }); ok {
		t.Error("balancer-terminated TLS must not look like broker-terminated TLS")
	}
}

func TestProxyTrustedIPv4MappedIPv6(t *testing.T) {
	pp := newProxyPolicy(&ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	tests := []struct {
		addr string
		want bool
	}{
		{"10.1.2.3:1000", true},
		{"[::ffff:10.1.2.3]:1000", true},
		{"11.1.2.3:1000", false},
		{"[2001:db8::1]:1000", false},
	}
	for _, tc := range tests {
		a := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr))
		if got := pp.trusted(a); got != tc.want {
			t.Errorf("trusted(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if !strings.Contains(DefaultProxyHeaderTimeout.String(), "s") {
		t.Error("unexpected default")
	}
}
