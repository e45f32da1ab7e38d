package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
)

// maxCSRSize bounds any CSR the CA will parse.
const maxCSRSize = 64 << 10

// ParseCSR accepts a CSR as PEM ("CERTIFICATE REQUEST" or "NEW
// CERTIFICATE REQUEST"), raw DER, or base64 DER (the EST encoding,
// whitespace allowed). It does not check the signature.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > maxCSRSize {
		return nil, errors.New("pki: CSR too large")
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("pki: PEM block %q is not a certificate request", b.Type)
		}
		der = b.Bytes
	} else if len(data) > 0 && data[0] != 0x30 {
		clean := bytes.Map(func(r rune) rune {
			if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
				return -1
			}
			return r
		}, data)
		d, err := base64.StdEncoding.DecodeString(string(clean))
		if err != nil {
			return nil, errors.New("pki: CSR is neither PEM, DER nor base64 DER")
		}
		der = d
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing CSR: %w", err)
	}
	return csr, nil
}

// CreateCSR makes a DER PKCS#10 request for cn with optional URI SANs.
func CreateCSR(rnd io.Reader, key crypto.Signer, cn string, uris []*url.URL) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rnd, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, URIs: uris}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: creating CSR: %w", err)
	}
	return der, nil
}
