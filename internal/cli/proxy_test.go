package cli

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// TestProxyProtocolIdentity runs a plain listener behind a (simulated)
// TLS-terminating load balancer: the PROXY v2 header's SSL TLV carries the
// verified client certificate's CN, which becomes the MQTT username.
func TestProxyProtocolIdentity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: behind-lb
    address: 127.0.0.1:0
    transport: tcp
    proxy_protocol:
      enabled: true
      trusted: [127.0.0.1/32]
      username_from: cn
persistence:
  enabled: false
`)
	p := startMoat(t, dir, "-c", "moat.yaml")

	connect := func(t *testing.T, tlvs []proxyproto.TLV) byte {
		t.Helper()
		nc, err := net.Dial("tcp", p.addr(0))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		h := &proxyproto.Header{
			Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
			SourceAddr:      &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000},
			DestinationAddr: &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 8883},
		}
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
		hdr, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		// MQTT 5 CONNECT, client "lb-dev", then read CONNACK's reason code.
		connectPkt := []byte{0x10, 0x13, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 6, 'l', 'b', '-', 'd', 'e', 'v'}
		nc.Write(append(hdr, connectPkt...))
		buf := make([]byte, 4)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := nc.Read(buf); err != nil || n < 4 || buf[0] != 0x20 {
			t.Fatalf("no CONNACK: %v % x", err, buf[:n])
		}
		return buf[3]
	}
	ssl := func(t *testing.T, verified bool) proxyproto.TLV {
		s := tlvparse.PP2SSL{
			Client: tlvparse.PP2_BITFIELD_CLIENT_SSL | tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN,
			TLV: []proxyproto.TLV{
				{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.3")},
				{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("sensor-042")},
			},
		}
		if !verified {
			s.Verify = 1
		}
		tlv, err := s.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return tlv
	}
	if rc := connect(t, []proxyproto.TLV{ssl(t, true)}); rc != 0 {
		t.Fatalf("verified certificate refused: reason 0x%02x\n%s", rc, p.logs.String())
	}
	if !p.waitLog(t, "username=sensor-042", "203.0.113.7") {
		t.Errorf("username or real client address not taken from the PROXY header:\n%s", p.logs.String())
	}
	if rc := connect(t, []proxyproto.TLV{ssl(t, false)}); rc != 0x87 {
		t.Fatalf("unverified certificate: reason 0x%02x, want 0x87", rc)
	}
	if rc := connect(t, nil); rc != 0x87 {
		t.Fatalf("no certificate information: reason 0x%02x, want 0x87", rc)
	}
}
