package pkitest

import (
	"bytes"
	"net/http"

	"golang.org/x/crypto/ocsp"

	"crypto/tls"
	"crypto/x509"
	"io"
	"os/exec"
	"testing"

	"github.com/moatmq/moat/internal/pki"
)

func TestLeavesWorkInMutualTLS(t *testing.T) {
	for _, alg := range []pki.KeyAlgorithm{pki.ECDSAP256, pki.RSA2048, pki.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			ca := New(t, Options{KeyAlgorithm: alg, OCSPURL: "http://127.0.0.1:1/ocsp", CRLURL: "http://127.0.0.1:1/crl"})
			srv := ca.Server(t, Options{KeyAlgorithm: alg})
			cli := ca.Client(t, Options{KeyAlgorithm: alg, URIs: []string{"spiffe://test/dev"}}, "dev-1")
			if cli.Cert.OCSPServer[0] != "http://127.0.0.1:1/ocsp" || cli.Cert.CRLDistributionPoints[0] != "http://127.0.0.1:1/crl" {
				t.Error("revocation URLs missing")
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				Certificates: []tls.Certificate{srv.TLS()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- err.Error()
					return
				}
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					got <- err.Error()
					return
				}
				got <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
				io.Copy(io.Discard, c)
			}()
			cc := cli.TLS()
			c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cc}})
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if cn := <-got; cn != "dev-1" {
				t.Fatalf("server saw %q", cn)
			}
		})
	}
}

func TestFilesAndCRLWithOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ca := New(t, Options{})
	dir := t.TempDir()
	leaf := ca.Client(t, Options{}, "dev")
	certFile, _ := leaf.WriteFiles(t, dir, "dev")
	root := ca.WriteRoot(t, dir)
	if o, err := exec.Command(openssl, "verify", "-CAfile", root, "-untrusted", certFile, certFile).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v %s", err, o)
	}
	crl, err := x509.ParseRevocationList(ca.CRL(t, leaf.Cert))
	if err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.CheckSignatureFrom(ca.Intermediate) != nil {
		t.Fatalf("CRL: %v", err)
	}
}

func TestServeRevocation(t *testing.T) {
	ca := New(t, Options{})
	ocspURL, crlURL := ca.ServeRevocation(t)
	leaf := ca.Client(t, Options{}, "dev")
	if leaf.Cert.OCSPServer[0] != ocspURL || leaf.Cert.CRLDistributionPoints[0] != crlURL {
		t.Fatal("leaf lacks the responder URLs")
	}
	status := func() int {
		req, _ := ocsp.CreateRequest(leaf.Cert, ca.Intermediate, nil)
		resp, err := http.Post(ocspURL, "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		r, err := ocsp.ParseResponseForCert(b, leaf.Cert, ca.Intermediate)
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if status() != ocsp.Good {
		t.Fatal("not good before revocation")
	}
	ca.Revoke(leaf.Cert)
	if status() != ocsp.Revoked {
		t.Fatal("not revoked after Revoke")
	}
	resp, err := http.Get(crlURL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(b)
	if err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.Cert.SerialNumber) != 0 {
		t.Fatalf("CRL: %v", err)
	}
}
