package tlsconf_test

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"

	"github.com/moatmq/moat/internal/tlsconf"
)

// A listener with the secure defaults: TLS 1.2+, client certificates
// required, a CRL enforced on live sessions.
func ExampleNew() {
	m, err := tlsconf.New(tlsconf.ListenerConfig{
		Name:         "mqtts :8883",
		Certificates: []tlsconf.KeyPair{{CertFile: "server.pem", KeyFile: "server.key"}},
		CAFile:       "ca.pem",
		CRLFiles:     []string{"ca.crl"},
		Identity:     tlsconf.IdentityMapping{Username: tlsconf.IdentityCN, BindClientID: "{cn}"},
	})
	if err != nil {
		log.Print(err) // every configuration problem at once
		return
	}
	defer m.Close()
	ln, err := tls.Listen("tcp", ":8883", m.TLSConfig())
	if err != nil {
		log.Print(err)
		return
	}
	defer ln.Close()
	// For each accepted connection: tlsconf.Handshake, then
	//   stop, err := m.Watch(conn.ConnectionState().PeerCertificates, drop)
	// and at CONNECT m.MapIdentity(state, username, clientID).
	_ = net.ErrClosed
}

func ExampleParseOpenSSLCiphers() {
	ids, ignored, err := tlsconf.ParseOpenSSLCiphers("EECDH+AESGCM:EDH+AESGCM:DHE-RSA-AES256-GCM-SHA384", false)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, id := range ids {
		fmt.Println(tls.CipherSuiteName(id))
	}
	fmt.Println(ignored)
	// Output:
	// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	// TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
	// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
	// TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
	// [DHE-RSA-AES256-GCM-SHA384: not implemented by Go's TLS stack]
}

func ExampleParseTLSVersion() {
	_, err := tlsconf.ParseTLSVersion("tlsv1.1")
	fmt.Println(err)
	// Output: tlsconf: tls_version "tlsv1.1" is below the minimum TLS 1.2 (NIST SP 800-52 Rev. 2); use tlsv1.2 or tlsv1.3
}
