package keyservice

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/moatmq/moat/e2e"
)

// HTTP paths served by [Service.Handler].
const (
	PathRegister   = "/v1/register"
	PathBundle     = "/v1/bundle"
	PathServiceKey = "/v1/service-key"
)

// RegisterRequest is the JSON body of a registration.
type RegisterRequest struct {
	KEM       string `json:"kem"`        // e.g. "mlkem768x25519"
	PublicKey []byte `json:"public_key"` // base64 in JSON
}

// ServiceKeyResponse is the JSON body of GET /v1/service-key.
type ServiceKeyResponse struct {
	Ed25519 []byte `json:"ed25519"`
	KeyID   string `json:"key_id"`
}

const maxRequestBody = 16 << 10

// Handler returns the HTTPS API. It must be served with a tls.Config that
// requires and verifies client certificates; the member ID is the
// Config.Identity of the verified client certificate. Requests without a
// verified certificate are refused.
//
//	POST /v1/register     {"kem": "...", "public_key": "<base64>"} → 204
//	GET  /v1/bundle       → 200 application/cose (a signed, sealed bundle)
//	GET  /v1/service-key  → 200 {"ed25519": "<base64>", "key_id": "<hex>"}
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathRegister, s.handleRegister)
	mux.HandleFunc("GET "+PathBundle, s.handleBundle)
	mux.HandleFunc("GET "+PathServiceKey, s.handleServiceKey)
	return mux
}

func (s *Service) identity(w http.ResponseWriter, r *http.Request) (string, bool) {
	var leaf *x509.Certificate
	switch {
	case r.TLS == nil:
	case s.cfg.Certs != nil && len(r.TLS.PeerCertificates) > 0:
		leaf = r.TLS.PeerCertificates[0]
	case s.cfg.Certs == nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0:
		leaf = r.TLS.VerifiedChains[0][0]
	}
	if leaf == nil {
		http.Error(w, "a verified client certificate is required", http.StatusUnauthorized)
		return "", false
	}
	id := s.cfg.Identity(leaf)
	if id == "" {
		http.Error(w, "the client certificate has no identity", http.StatusForbidden)
		return "", false
	}
	if s.cfg.Certs != nil {
		if err := s.verifyMember(r.Context(), id, r.TLS.PeerCertificates); err != nil {
			s.log.Warn("keyservice: client certificate refused", "member", id, "serial", fmt.Sprintf("%X", leaf.SerialNumber), "err", err)
			http.Error(w, "the client certificate is not valid: "+err.Error(), http.StatusForbidden)
			return "", false
		}
	}
	return id, true
}

func (s *Service) handleRegister(w http.ResponseWriter, r *http.Request) {
	id, ok := s.identity(w, r)
	if !ok {
		return
	}
	var req RegisterRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	kem, err := e2e.ParseKEM(req.KEM)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	err = s.Register(id, e2e.MemberPublicKey{KEM: kem, Key: req.PublicKey})
	switch {
	case errors.Is(err, ErrNotMember):
		http.Error(w, err.Error(), http.StatusForbidden)
	case err != nil:
		s.log.Warn("keyservice: registration refused", "member", id, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Service) handleBundle(w http.ResponseWriter, r *http.Request) {
	id, ok := s.identity(w, r)
	if !ok {
		return
	}
	b, err := s.Bundle(id)
	switch {
	case errors.Is(err, ErrNotMember):
		http.Error(w, err.Error(), http.StatusForbidden)
	case errors.Is(err, ErrNoPublicKey):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		s.log.Error("keyservice: bundle", "member", id, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	default:
		w.Header().Set("Content-Type", "application/cose; cose-type=\"cose-sign1\"")
		w.Write(b)
	}
}

func (s *Service) handleServiceKey(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.identity(w, r); !ok {
		return
	}
	pub := s.PublicKey()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(ServiceKeyResponse{Ed25519: pub, KeyID: fmt.Sprintf("%x", e2e.ServiceKeyID(pub))})
}

// Run calls RotateDue every interval (zero: one minute) until ctx is done,
// logging failures. With Config.Certs it also watches the stored latest
// certificate of every member (at start, so revocations published while
// the service was stopped take effect, and again each interval for watches
// that ended without a revocation) and removes a member whose certificate
// is revoked from all its groups as soon as the checker reports it. It
// returns ctx.Err().
func (s *Service) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.rewatch()
		s.applyRevocations()
		if _, err := s.RotateDue(); err != nil {
			s.log.Error("keyservice: scheduled rotation failed", "err", err)
		}
		if !s.waitTick(ctx, t.C) {
			return ctx.Err()
		}
	}
}

// waitTick applies revocations as they are reported until tick fires
// (true) or ctx is done (false).
func (s *Service) waitTick(ctx context.Context, tick <-chan time.Time) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.wake:
			s.applyRevocations()
		case <-tick:
			return true
		}
	}
}

// Client talks to a key service over HTTPS. HTTPClient must present the
// member's client certificate and trust the service's CA.
type Client struct {
	BaseURL    string // e.g. "https://keys.example:8443"
	HTTPClient *http.Client
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return nil, fmt.Errorf("keyservice: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("keyservice: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("keyservice: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("keyservice: %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	return data, nil
}

// Register registers the member's public key.
func (c *Client) Register(ctx context.Context, pub e2e.MemberPublicKey) error {
	body, _ := json.Marshal(RegisterRequest{KEM: pub.KEM.String(), PublicKey: pub.Key})
	_, err := c.do(ctx, http.MethodPost, PathRegister, body)
	return err
}

// Bundle fetches the member's current bundle (still sealed and signed).
func (c *Client) Bundle(ctx context.Context) ([]byte, error) {
	return c.do(ctx, http.MethodGet, PathBundle, nil)
}

// ServiceKey fetches the service's bundle-signing key. Pin it: compare its
// key ID with the one `moat keys status` prints on the service host.
func (c *Client) ServiceKey(ctx context.Context) (ed25519.PublicKey, error) {
	data, err := c.do(ctx, http.MethodGet, PathServiceKey, nil)
	if err != nil {
		return nil, err
	}
	var r ServiceKeyResponse
	if err := json.Unmarshal(data, &r); err != nil || len(r.Ed25519) != ed25519.PublicKeySize {
		return nil, errors.New("keyservice: bad service-key response")
	}
	return ed25519.PublicKey(r.Ed25519), nil
}

// BundleTopic returns the MQTT topic a member's bundle is published on,
// $moat/keys/<member>, with '%', '/', '+', '#' and NUL in the member ID
// percent-encoded so that the ID is exactly one topic level.
func BundleTopic(member string) string {
	var b strings.Builder
	b.WriteString("$moat/keys/")
	for i := 0; i < len(member); i++ {
		switch c := member[i]; c {
		case '%', '/', '+', '#', 0:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Publisher publishes one message; an MQTT client adapts to it. Bundles
// are published retained, so a member that connects later still receives
// its latest bundle.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
}

// PublishBundles seals a fresh bundle for each member and publishes it on
// BundleTopic(member), retained. Members without a registered key or no
// longer in any group are skipped (a removed member's old retained bundle
// only holds keys it already had). It returns the errors of all members
// joined. Typical use: Config.OnChange hands the member list to a
// goroutine that calls PublishBundles.
func (s *Service) PublishBundles(ctx context.Context, p Publisher, members []string) error {
	var errs []error
	for _, m := range members {
		b, err := s.Bundle(m)
		if errors.Is(err, ErrNoPublicKey) || errors.Is(err, ErrNotMember) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("keyservice: bundle for %q: %w", m, err))
			continue
		}
		if err := p.Publish(ctx, BundleTopic(m), b, true); err != nil {
			errs = append(errs, fmt.Errorf("keyservice: publishing bundle for %q: %w", m, err))
		}
	}
	return errors.Join(errs...)
}
