package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// maxESTResponse bounds EST response bodies the client reads.
const maxESTResponse = 1 << 20

// ESTClient is the device side of EST (RFC 7030). It is safe for
// concurrent use once configured.
type ESTClient struct {
	// Server is the EST server's base URL, e.g. https://ca.example.com:8443
	// (ESTPathPrefix is appended).
	Server string
	// Roots verifies the server's certificate (the CA's ca.pem). Nil
	// means the system roots.
	Roots *x509.CertPool
	// Timeout bounds each request; zero means 30 seconds.
	Timeout time.Duration
}

func (c *ESTClient) do(ctx context.Context, method, op string, body []byte, clientCert *tls.Certificate, basic [2]string) ([]*x509.Certificate, error) {
	base := strings.TrimRight(c.Server, "/")
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("pki: EST server %q must be an https:// URL", c.Server)
	}
	tc := &tls.Config{RootCAs: c.Roots, MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		cc := *clientCert
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cc, nil }
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: false, DisableKeepAlives: true}
	hc := &http.Client{Transport: tr, Timeout: timeout}
	defer tr.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(base64.StdEncoding.EncodeToString(body)) // RFC 8951: no line breaks
	}
	req, err := http.NewRequestWithContext(ctx, method, base+ESTPathPrefix+op, rd)
	if err != nil {
		return nil, fmt.Errorf("pki: EST %s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/pkcs10")
		req.Header.Set("Content-Transfer-Encoding", "base64")
	}
	if basic[0] != "" {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pki: EST %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxESTResponse))
	if err != nil {
		return nil, fmt.Errorf("pki: EST %s: reading response: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, &ESTStatusError{Op: op, StatusCode: resp.StatusCode, Message: msg}
	}
	der, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(data), nil)))
	if err != nil {
		return nil, fmt.Errorf("pki: EST %s: response is not base64", op)
	}
	return ParseCertsOnly(der)
}

// ESTStatusError is a non-200 answer of an EST server.
type ESTStatusError struct {
	Op         string
	StatusCode int
	Message    string
}

func (e *ESTStatusError) Error() string {
	hint := ""
	switch e.StatusCode {
	case http.StatusUnauthorized:
		hint = " (check the device ID and bootstrap token; tokens work once)"
	case http.StatusForbidden:
		hint = " (the request names something this credential may not have)"
	}
	return fmt.Sprintf("pki: EST %s refused: %d %s: %s%s", e.Op, e.StatusCode, http.StatusText(e.StatusCode), e.Message, hint)
}

// CACerts fetches the CA certificates (/cacerts).
func (c *ESTClient) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	return c.do(ctx, http.MethodGet, "cacerts", nil, nil, [2]string{})
}

// Enroll sends a DER CSR to /simpleenroll authorized by the bootstrap
// token for id, and returns the issued certificate (first element) and
// any other certificates in the answer.
func (c *ESTClient) Enroll(ctx context.Context, csrDER []byte, id, token string) ([]*x509.Certificate, error) {
	return c.do(ctx, http.MethodPost, "simpleenroll", csrDER, nil, [2]string{id, token})
}

// EnrollWithCertificate sends a DER CSR to /simpleenroll authorized by a
// TLS client certificate (a manufacturer certificate).
func (c *ESTClient) EnrollWithCertificate(ctx context.Context, csrDER []byte, cert tls.Certificate) ([]*x509.Certificate, error) {
	return c.do(ctx, http.MethodPost, "simpleenroll", csrDER, &cert, [2]string{})
}

// Reenroll sends a DER CSR to /simplereenroll authorized by the current
// certificate.
func (c *ESTClient) Reenroll(ctx context.Context, csrDER []byte, current tls.Certificate) ([]*x509.Certificate, error) {
	return c.do(ctx, http.MethodPost, "simplereenroll", csrDER, &current, [2]string{})
}

// Enroller keeps a device certificate at PREFIX.pem / PREFIX.key: it
// enrolls once with a bootstrap token and then renews before expiry.
// Configure it before use; its methods must not run concurrently with each
// other (they write the same files). Nil Now, Rand and Logger mean
// time.Now, crypto/rand and slog.Default().
type Enroller struct {
	Client *ESTClient
	// ID is the device ID (the certificate's CN).
	ID string
	// Token is the one-time bootstrap token for the first enrollment.
	Token string
	// AuthCertificate, when set, authorizes the first enrollment instead
	// of Token (a manufacturer certificate).
	AuthCertificate *tls.Certificate
	// URIs are requested as URI SANs (e.g. a SPIFFE ID).
	URIs []*url.URL
	// KeyAlgorithm of the keys generated locally; default ECDSA P-256.
	KeyAlgorithm KeyAlgorithm
	// Prefix names the output files PREFIX.pem and PREFIX.key.
	Prefix string
	// RenewFraction of the lifetime after which to renew; default 2/3.
	RenewFraction float64
	// RetryInterval after a failed renewal, doubling up to an hour;
	// default 30 seconds.
	RetryInterval time.Duration
	Now           func() time.Time
	Rand          io.Reader
	Logger        *slog.Logger
	// After is time.After unless a test replaces it.
	After func(time.Duration) <-chan time.Time
}

func (e *Enroller) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Enroller) rnd() io.Reader {
	if e.Rand != nil {
		return e.Rand
	}
	return rand.Reader
}

func (e *Enroller) log() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

// RenewAt returns when a certificate should be renewed: after fraction
// (default 2/3) of its lifetime.
func RenewAt(c *x509.Certificate, fraction float64) time.Time {
	if fraction <= 0 || fraction >= 1 {
		fraction = 2.0 / 3
	}
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * fraction))
}

func (e *Enroller) chainWithCA(ctx context.Context, certs []*x509.Certificate) ([]*x509.Certificate, error) {
	chain := []*x509.Certificate{certs[0]}
	cas, err := e.Client.CACerts(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cas {
		if !bytes.Equal(c.RawIssuer, c.RawSubject) { // omit self-signed roots
			chain = append(chain, c)
		}
	}
	return chain, nil
}

// Enroll generates a key, enrolls with the bootstrap token and writes the
// files. It returns the new certificate.
func (e *Enroller) Enroll(ctx context.Context) (*x509.Certificate, error) {
	if e.Token == "" && e.AuthCertificate == nil {
		return nil, errors.New("pki: enrollment needs a bootstrap token (moat ca token create ID) or a manufacturer certificate")
	}
	key, err := GenerateKey(e.KeyAlgorithm, e.rnd())
	if err != nil {
		return nil, err
	}
	csr, err := CreateCSR(e.rnd(), key, e.ID, e.URIs)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	if e.AuthCertificate != nil {
		certs, err = e.Client.EnrollWithCertificate(ctx, csr, *e.AuthCertificate)
	} else {
		certs, err = e.Client.Enroll(ctx, csr, e.ID, e.Token)
	}
	if err != nil {
		return nil, err
	}
	return e.finish(ctx, certs, key)
}

func (e *Enroller) finish(ctx context.Context, certs []*x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	if !publicKeysEqual(key.Public(), certs[0].PublicKey) {
		return nil, errors.New("pki: EST server returned a certificate for another key")
	}
	chain, err := e.chainWithCA(ctx, certs)
	if err != nil {
		return nil, err
	}
	if err := WriteCertKeyFiles(e.Prefix, chain, key); err != nil {
		return nil, err
	}
	e.log().Info("pki: enrolled", "id", e.ID, "serial", SerialString(certs[0].SerialNumber), "not_after", certs[0].NotAfter, "files", e.Prefix+".pem")
	return certs[0], nil
}

// Current loads PREFIX.pem and PREFIX.key.
func (e *Enroller) Current() (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(e.Prefix+".pem", e.Prefix+".key")
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: loading current certificate: %w", err)
	}
	return c, nil
}

// Renew re-enrolls with a new key, authorized by the current certificate,
// and replaces the files.
func (e *Enroller) Renew(ctx context.Context) (*x509.Certificate, error) {
	cur, err := e.Current()
	if err != nil {
		return nil, err
	}
	key, err := GenerateKey(e.KeyAlgorithm, e.rnd())
	if err != nil {
		return nil, err
	}
	csr, err := CreateCSR(e.rnd(), key, cur.Leaf.Subject.CommonName, cur.Leaf.URIs)
	if err != nil {
		return nil, err
	}
	certs, err := e.Client.Reenroll(ctx, csr, cur)
	if err != nil {
		return nil, err
	}
	return e.finish(ctx, certs, key)
}

// Run enrolls when PREFIX.pem is missing or expired, then renews at
// RenewAt until ctx is cancelled (it returns nil then). Failed renewals
// are retried with backoff; a failed first enrollment is returned.
func (e *Enroller) Run(ctx context.Context) error {
	after := e.After
	if after == nil {
		after = time.After
	}
	var leaf *x509.Certificate
	if cur, err := e.Current(); err == nil && e.now().Before(cur.Leaf.NotAfter) {
		leaf = cur.Leaf
	} else {
		if _, statErr := os.Stat(e.Prefix + ".pem"); statErr == nil && err == nil {
			e.log().Warn("pki: current certificate has expired; enrolling again", "files", e.Prefix+".pem")
		}
		if leaf, err = e.Enroll(ctx); err != nil {
			return err
		}
	}
	retry := e.RetryInterval
	if retry <= 0 {
		retry = 30 * time.Second
	}
	backoff := retry
	for {
		wait := RenewAt(leaf, e.RenewFraction).Sub(e.now())
		if wait > 0 {
			e.log().Info("pki: next renewal", "at", e.now().Add(wait).Format(time.RFC3339))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-after(max(wait, 0)):
		}
		n, err := e.Renew(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			e.log().Error("pki: renewal failed; will retry", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-after(backoff):
			}
			backoff = min(backoff*2, time.Hour)
			if !e.now().Before(leaf.NotAfter) {
				return fmt.Errorf("pki: certificate expired before it could be renewed: %w", err)
			}
			continue
		}
		leaf, backoff = n, retry
	}
}
