package listener

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// FuzzProxyHeader feeds arbitrary bytes through the PROXY header reader and
// this package's interpretation of it (addresses, SSL TLV, client
// certificate), checking it never panics and never reports an identity the
// header did not carry.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 198.51.100.1 40000 8883\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		pi, err := proxyInfoFromHeader(h)
		if err != nil {
			return
		}
		if !pi.Local {
			if _, ok := pi.Source.(*net.TCPAddr); !ok {
				t.Fatalf("PROXY command without a TCP source: %+v", pi)
			}
		} else if pi.Source != nil {
			t.Fatalf("LOCAL command with a source address: %+v", pi)
		}
		if ti := pi.TLS; ti != nil {
			if ti.Verified() && (!ti.ClientSSL || !(ti.CertConn || ti.CertSession) || ti.VerifyResult != 0) {
				t.Fatalf("Verified without a verified certificate: %+v", ti)
			}
			if ti.ClientCertificate != nil && ti.CommonName != "" && ti.ClientCertificate.Subject.CommonName != ti.CommonName {
				t.Fatalf("CN and certificate disagree: %+v", ti)
			}
		}
		if pi.Version == 1 && (pi.TLS != nil || len(pi.TLVs) > 0) {
			t.Fatal("v1 header with TLVs")
		}
	})
}
