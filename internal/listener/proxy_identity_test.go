package listener

import (
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"
)

// PROXY v2 headers built byte by byte, so that the tests do not depend on
// what a library is willing to encode.

// rawProxyV2 is a v2 header: command 0x0 LOCAL or 0x1 PROXY, family 0x00
// UNSPEC or 0x11 TCP over IPv4, the address block and the TLVs.
func rawProxyV2(cmd, family byte, addrs []byte, tlvs ...[]byte) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x20|cmd, family)
	body := append([]byte(nil), addrs...)
	for _, t := range tlvs {
		body = append(body, t...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// rawIPv4 is the address block 203.0.113.7:40000 → 198.51.100.1:8883.
func rawIPv4() []byte {
	b := []byte{203, 0, 113, 7, 198, 51, 100, 1}
	b = binary.BigEndian.AppendUint16(b, 40000)
	return binary.BigEndian.AppendUint16(b, 8883)
}

func rawTLV(typ byte, value []byte) []byte {
	b := binary.BigEndian.AppendUint16([]byte{typ}, uint16(len(value)))
	return append(b, value...)
}

// rawVerifiedSSL is a PP2_TYPE_SSL TLV saying the client presented a
// certificate on this connection and it verified, with version and CN
// sub-TLVs.
func rawVerifiedSSL(cn string) []byte {
	v := []byte{0x01 | 0x02 | 0x04, 0, 0, 0, 0} // CLIENT_SSL|CERT_CONN|CERT_SESS, verify 0
	v = append(v, rawTLV(0x21, []byte("TLSv1.3"))...)
	v = append(v, rawTLV(0x22, []byte(cn))...)
	return rawTLV(0x20, v)
}

// sendHeader connects from the trusted balancer address, sends hdr and an
// MQTT CONNECT, and returns the accepted connection, or nil when the
// listener refused it (closed the connection without accepting it).
func sendHeader(t *testing.T, hdr []byte) *Conn {
	t.Helper()
	l := listen(t, Config{Name: "behind-lb", Proxy: &ProxyConfig{Trusted: loopbackOnly}, Logger: testLogger(t)})
	ch := acceptAsync(l)
	c := dialFrom(t, l, "127.0.0.1")
	if _, err := c.Write(append(hdr, connectPacket...)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		io.Copy(io.Discard, c) // ends when either side closes
	}()
	t.Cleanup(func() { c.Close(); <-closed })
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c.(*Conn)
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("neither accepted nor refused")
	}
	l.Close()
	if r := <-ch; r.err == nil {
		r.c.Close()
		t.Fatal("the listener closed the connection yet accepted it")
	}
	return nil
}

// TestSecurityProxyCNControlCharacters: the attack is a CN with control
// or formatting characters in the PP2_SUBTYPE_SSL_CN of a PROXY v2 header
// (from a client certificate the balancer verified, or a compromised
// balancer): "adm\nin" forges a second log line, escape sequences drive
// the operator's terminal, a right-to-left override makes a name print as
// another. Certificate identities are checked for these; the CN reported
// by the balancer skipped the check and became the MQTT username. Now the
// header is refused.
func TestSecurityProxyCNControlCharacters(t *testing.T) {
	for _, cn := range []string{
		"adm\nin",
		"admin\r\ntime=2026 level=INFO msg=\"login ok\"",
		"\x1b]0;owned\x07",
		"\x1b[2J\x1b[Hroot",
		"admin\x00evil",
		"adm\u009b31min", // C1 CSI
		"\u202enimda",    // right-to-left override
		"\xff\xfeadmin",  // not UTF-8
		"del\x7f",
	} {
		t.Run(strings.ToValidUTF8(strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return '?'
			}
			return r
		}, cn), "?"), func(t *testing.T) {
			if c := sendHeader(t, rawProxyV2(0x1, 0x11, rawIPv4(), rawVerifiedSSL(cn))); c != nil {
				pt, _ := c.ProxyTLS()
				t.Fatalf("header accepted; CN %q reported", pt.CommonName)
			}
		})
	}
	// A plain CN still passes.
	c := sendHeader(t, rawProxyV2(0x1, 0x11, rawIPv4(), rawVerifiedSSL("device-0001")))
	if c == nil {
		t.Fatal("a header with a plain CN was refused")
	}
	if pt, ok := c.ProxyTLS(); !ok || !pt.Verified() || pt.CommonName != "device-0001" {
		t.Fatalf("ProxyTLS = %+v", pt)
	}
}

// TestSecurityProxyLocalCarriesNoIdentity: the attack is a LOCAL header
// (the balancer's own health-check connection, no client behind it) that
// carries a TLS TLV naming a verified client certificate, which was
// accepted as if a client had authenticated. A LOCAL header with a TLS TLV
// is now refused; its other TLVs are dropped.
func TestSecurityProxyLocalCarriesNoIdentity(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hdr    []byte
		refuse bool
	}{
		{"LOCAL with SSL TLV", rawProxyV2(0x0, 0x00, nil, rawVerifiedSSL("admin")), true},
		{"LOCAL TCPv4 with SSL TLV", rawProxyV2(0x0, 0x11, rawIPv4(), rawVerifiedSSL("admin")), true},
		{"PROXY UNSPEC with SSL TLV", rawProxyV2(0x1, 0x00, nil, rawVerifiedSSL("admin")), true},
		{"LOCAL with other TLVs", rawProxyV2(0x0, 0x00, nil, rawTLV(0x02, []byte("mqtt.example.com")), rawTLV(0x05, []byte("id-1"))), false},
		{"LOCAL bare", rawProxyV2(0x0, 0x00, nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sendHeader(t, tc.hdr)
			if tc.refuse {
				if c != nil {
					pt, _ := c.ProxyTLS()
					t.Fatalf("accepted; ProxyTLS %+v", pt)
				}
				return
			}
			if c == nil {
				t.Fatal("health-check connection refused")
			}
			info := Info(c)
			if info.Proxy == nil || !info.Proxy.Local || info.ProxyTLS != nil || len(info.Proxy.TLVs) != 0 || info.Proxy.Authority != "" {
				t.Fatalf("LOCAL connection carries client information: %+v", info.Proxy)
			}
		})
	}
}
