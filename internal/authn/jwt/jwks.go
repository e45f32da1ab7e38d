package jwt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	gojwt "github.com/golang-jwt/jwt/v5"
)

// maxJWKSKeys caps the keys taken from one JWKS document.
const maxJWKSKeys = 64

// jwks is a JWKS fetched over HTTPS and cached. It starts no goroutine: a
// decision that finds the keys missing, old, or without the token's kid
// fetches them itself, at most once per minRefresh, and concurrent deciders
// wait for the same fetch.
type jwks struct {
	url        string
	client     *http.Client
	maxBytes   int64
	timeout    time.Duration
	every      time.Duration
	minRefresh time.Duration
	maxStale   time.Duration
	now        func() time.Time
	log        *slog.Logger

	mu        sync.Mutex
	set       keyfunc.Keyfunc // nil until a fetch succeeded
	fetched   time.Time       // last successful fetch
	attempted time.Time       // last fetch attempt
	lastErr   error           // of the last failed attempt
	inflight  *fetchCall
}

type fetchCall struct {
	done chan struct{}
	err  error
}

func newJWKS(c *Config, log *slog.Logger) (*jwks, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("jwt: reading ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("jwt: ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   c.FetchTimeout,
			ResponseHeaderTimeout: c.FetchTimeout,
			MaxIdleConns:          2,
			IdleConnTimeout:       time.Minute,
		},
		Timeout: c.FetchTimeout,
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if r.URL.Scheme != "https" {
				return fmt.Errorf("jwt: JWKS redirect to %s refused: not https", r.URL.Redacted())
			}
			if len(via) >= 3 {
				return errors.New("jwt: JWKS: too many redirects")
			}
			return nil
		},
	}
	return &jwks{
		url: c.JWKSURL, client: client, maxBytes: c.MaxJWKSBytes, timeout: c.FetchTimeout,
		every: c.RefreshInterval, minRefresh: c.MinRefreshInterval, maxStale: c.MaxStale,
		now: c.Now, log: log,
	}, nil
}

func (j *jwks) unavailable(format string, args ...any) error {
	return &unavailableError{msg: fmt.Sprintf("JWKS %s: ", j.url) + fmt.Sprintf(format, args...)}
}

// current returns the key set to decide with, fetching it first when it is
// missing or older than the refresh interval. Keys that cannot be refreshed
// are used until maxStale.
func (j *jwks) current(ctx context.Context) (keyfunc.Keyfunc, error) {
	j.mu.Lock()
	now := j.now()
	set, fetched := j.set, j.fetched
	j.mu.Unlock()
	if set != nil && now.Sub(fetched) < j.every {
		return set, nil
	}
	err := j.refresh(ctx)
	j.mu.Lock()
	set, fetched = j.set, j.fetched
	j.mu.Unlock()
	switch {
	case err == nil && set != nil:
		return set, nil
	case set != nil && now.Sub(fetched) < j.maxStale:
		return set, nil // the failed refresh was logged: decide with the cache
	case set != nil:
		return nil, j.unavailable("keys fetched %s ago are too old to trust and cannot be refreshed: %v", now.Sub(fetched).Round(time.Second), err)
	}
	return nil, j.unavailable("no keys yet: %v", err)
}

// key implements keySource.
func (j *jwks) key(ctx context.Context, t *gojwt.Token) (any, error) {
	set, err := j.current(ctx)
	if err != nil {
		return nil, err
	}
	k, err := set.KeyfuncCtx(ctx)(t)
	if errors.Is(err, jwkset.ErrKeyNotFound) {
		// The provider may have rotated to a new key: fetch again (refresh
		// does so at most once per minRefresh, so a flood of made-up key
		// IDs does not become a flood of fetches).
		if err := j.refresh(ctx); err != nil {
			return nil, j.unavailable("token's key ID is unknown and the key set cannot be refreshed: %v", err)
		}
		j.mu.Lock()
		set = j.set
		j.mu.Unlock()
		k, err = set.KeyfuncCtx(ctx)(t)
		if errors.Is(err, jwkset.ErrKeyNotFound) {
			return nil, errUnknownKID
		}
	}
	if err != nil {
		return nil, err
	}
	switch kk := k.(type) {
	case gojwt.VerificationKeySet: // token without kid: every key of the set
		keys := make([]any, len(kk.Keys))
		for i, k := range kk.Keys {
			keys[i] = k
		}
		return fitting(t.Method.Alg(), keys)
	default:
		if !keyFits(t.Method.Alg(), k) {
			return nil, errKeyType
		}
		return k, nil
	}
}

// refresh fetches the key set, waits for the fetch another decider started,
// or, when the last attempt was less than minRefresh ago, returns that
// attempt's outcome without fetching.
func (j *jwks) refresh(ctx context.Context) error {
	j.mu.Lock()
	if c := j.inflight; c != nil {
		j.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if !j.attempted.IsZero() && j.now().Sub(j.attempted) < j.minRefresh {
		err := j.lastErr
		j.mu.Unlock()
		return err
	}
	c := &fetchCall{done: make(chan struct{})}
	j.inflight = c
	j.attempted = j.now()
	j.mu.Unlock()

	// The fetch outlives a decider whose connect deadline is short, so
	// that one impatient client cannot fail it for everyone; FetchTimeout
	// bounds it.
	set, n, err := j.fetch(context.WithoutCancel(ctx))

	j.mu.Lock()
	if err == nil {
		j.set, j.fetched, j.lastErr = set, j.now(), nil
	} else {
		j.lastErr = err
	}
	j.inflight = nil
	c.err = err
	close(c.done)
	j.mu.Unlock()
	if err != nil {
		j.log.Warn("jwt: JWKS fetch failed", "url", j.url, "err", err)
	} else {
		j.log.Info("jwt: JWKS fetched", "url", j.url, "keys", n)
	}
	return err
}

// fetch downloads and parses the JWKS. Keys that cannot be used (symmetric
// keys, unsupported types, encryption keys) are skipped; a set with no
// usable key is an error.
func (j *jwks) fetch(ctx context.Context) (keyfunc.Keyfunc, int, error) {
	ctx, cancel := context.WithTimeout(ctx, j.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, j.maxBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("reading: %w", err)
	}
	if int64(len(body)) > j.maxBytes {
		return nil, 0, fmt.Errorf("document larger than %d bytes", j.maxBytes)
	}
	var doc jwkset.JWKSMarshal
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, 0, fmt.Errorf("not a JWK set: %w", err)
	}
	store := jwkset.NewMemoryStorage()
	n := 0
	for i, m := range doc.Keys {
		if n == maxJWKSKeys {
			j.log.Warn("jwt: JWKS has too many keys; the rest are ignored", "url", j.url, "max", maxJWKSKeys)
			break
		}
		if m.KTY == jwkset.KtyOct || (m.USE != "" && m.USE != jwkset.UseSig) {
			continue // secrets have no place in a published set; enc keys do not sign
		}
		k, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			j.log.Warn("jwt: JWKS key skipped", "url", j.url, "index", i, "kid", clip(m.KID), "err", err)
			continue
		}
		if err := store.KeyWrite(ctx, k); err != nil {
			return nil, 0, err
		}
		n++
	}
	if n == 0 {
		return nil, 0, errors.New("the key set has no usable signing key")
	}
	kf, err := keyfunc.New(keyfunc.Options{Ctx: context.Background(), Storage: store, UseWhitelist: []jwkset.USE{jwkset.UseSig, ""}})
	if err != nil {
		return nil, 0, err
	}
	return kf, n, nil
}
