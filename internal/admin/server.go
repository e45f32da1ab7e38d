// Package admin is Moat's admin HTTP API (/api/v1), its OpenAPI document
// and the web dashboard, all served by one handler. Every API request
// carries a bearer token (see Tokens); there is no cookie, so no request
// a browser makes on its own is ever authenticated (CSRF-safe by
// construction). Viewers read; operators also change state, and every
// change is rate-limited, logged and handed to an Auditor.
//
// The package reaches the broker, the ban list, the CA and the audit log
// through what Config hands it; internal/cli wires them.
package admin

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/topic"
)

// Broker is what the API reads from and does to the broker
// (*broker.Server implements it).
type Broker interface {
	Stats() broker.Stats
	Clients() []broker.ClientInfo
	Kick(clientID, reason string) bool
	Sessions() []broker.SessionInfo
	Subscriptions() []topic.Subscription
	RetainedMatch(filter string, limit int) ([]broker.RetainedInfo, bool)
	DeleteRetained(topic string) bool
}

var _ Broker = (*broker.Server)(nil)

// BanList is the ban list the API reads and changes: the broker's guard
// (internal/cli adapts *guard.Guard), so that a ban added or removed
// takes effect at once (the live clients it matches are disconnected
// before the answer), is stored where the broker keeps its bans (the
// durable store or the bans file) and honours max_bans
// (guard.ErrBanListFull).
type BanList interface {
	Bans() []guard.Ban
	AddBan(b guard.Ban) (guard.Ban, error)
	RemoveBan(id string) (guard.Ban, error)
}

var _ BanList = (*guard.Guard)(nil)

// Action is one mutating API call, for the audit log.
type Action struct {
	Token  string // name of the token that made the call
	Remote string // the caller's address
	Action string // "kick", "ban.add", "ban.remove", "retained.delete", "cert.revoke", "reload", "cluster.remove_node"
	Target string // what it acted on
	Result string // "ok" or the error
}

// Auditor records mutating calls. Implementations must be safe for
// concurrent use.
type Auditor interface {
	AdminAction(a Action)
}

// Listener describes one broker listener for the API.
type Listener struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Transport string `json:"transport"`
	// TLS policy; empty for plain listeners.
	TLS               bool     `json:"tls"`
	ClientAuth        string   `json:"client_auth,omitempty"`
	MinVersion        string   `json:"min_version,omitempty"`
	Groups            []string `json:"groups,omitempty"`
	AllowAnonymous    bool     `json:"allow_anonymous"`
	IdentitySource    string   `json:"identity_source,omitempty"`
	ActiveConnections int      `json:"active_connections"`
}

// Posture is the security posture panel's static part; the handler adds
// what it measures (TLS in use, certificates near expiry).
type Posture struct {
	Profile string `json:"profile"`
	FIPS    bool   `json:"fips"`
	// FIPSMode is "off", "on" or "only" (GODEBUG=fips140=only: a
	// non-approved algorithm fails); FIPSModule the Go Cryptographic
	// Module's version.
	FIPSMode   string `json:"fips_mode,omitempty"`
	FIPSModule string `json:"fips_module,omitempty"`
	// CRLs lists the CRLs the listeners check, with their age.
	CRLs []CRLInfo `json:"crls"`
	// OCSP lists the OCSP state of each TLS listener.
	OCSP []OCSPInfo `json:"ocsp"`
	// AuthFailures and Detections are counters where the subsystems
	// provide them; -1 when they are not wired. DetectionsBy breaks the
	// detections down by detector.
	AuthFailures int64            `json:"auth_failures"`
	Detections   int64            `json:"detections"`
	DetectionsBy map[string]int64 `json:"detections_by_detector,omitempty"`
	// ServerCertNotAfter is the broker certificate's expiry (zero: none).
	ServerCertNotAfter time.Time `json:"server_cert_not_after,omitzero"`
	Notes              []string  `json:"notes,omitempty"`
}

// OCSPInfo is one TLS listener's OCSP state: how client certificates are
// checked, the responders' answers by status, and the freshness of the
// staples of its certificates that name a responder.
type OCSPInfo struct {
	Listener  string            `json:"listener"`
	Mode      string            `json:"mode"` // off, fail-open or fail-closed
	Responses map[string]uint64 `json:"responses"`
	Staples   []StapleInfo      `json:"staples"`
}

// StapleInfo is the OCSP staple of one served certificate.
type StapleInfo struct {
	Certificate string    `json:"certificate"`
	Good        bool      `json:"good"`
	NextUpdate  time.Time `json:"next_update,omitzero"`
}

// CRLInfo is one CRL's freshness.
type CRLInfo struct {
	File       string    `json:"file"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitzero"`
}

// Config configures the Handler. Broker and Tokens are required; a nil
// optional field makes its endpoints answer 501.
type Config struct {
	Broker Broker
	Tokens *Tokens
	// Bans is the broker's ban list; nil (defense off): the ban
	// endpoints answer 501.
	Bans BanList
	// CA opens the built-in CA; nil or an error: no certificates API.
	CA func() (*pki.CA, error)
	// AuditFile and AuditKeyFile are the audit log and its audit.pub.
	AuditFile, AuditKeyFile string
	// Listeners returns the broker's listeners.
	Listeners func() []Listener
	// Config returns the effective configuration, JSON-encodable; the
	// handler redacts every field whose name says it is a secret.
	Config func() any
	// Reload applies the configuration again (the start-up plan's reload).
	// An error wrapping ErrNotShared means the reload was applied on this
	// node but a changed access file could not be sent to the cluster
	// (503); any other error, that nothing was applied (409).
	Reload func(ctx context.Context) error
	// Posture returns the posture panel's static part.
	Posture func() Posture
	// Metrics serves /metrics (behind the same token check).
	Metrics http.Handler
	// Cluster returns this node's view of its cluster, JSON-encodable
	// (internal/cluster's Status); nil when the node is not in one.
	Cluster func() any
	// RemoveClusterNode takes the named node out of the cluster for good
	// (internal/cluster's RemoveNode), refusing a live one unless force
	// with an error wrapping ErrNodeAlive. A nil result with an error: the
	// request was refused before anything changed. Nil: 501.
	RemoveClusterNode func(ctx context.Context, node string, force bool) (any, error)
	// VerifyClientCert verifies a client certificate chain as the TLS
	// peer sent it (leaf first) against the built-in CA, its CRL and the
	// clock, on every request that authenticates by certificate; an
	// error refuses it. nil: client certificates are not accepted (see
	// CertificateRole).
	VerifyClientCert func(ctx context.Context, chain []*x509.Certificate) error
	// Auditor records mutating calls; nil records nothing.
	Auditor Auditor
	// Logger defaults to slog.Default(). Now defaults to time.Now.
	Logger *slog.Logger
	Now    func() time.Time
	// MutationsPerMinute bounds mutating calls per token. Default 60.
	MutationsPerMinute int
}

// Handler is the admin HTTP handler. Create it with New.
type Handler struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	mu        sync.Mutex
	limiters  map[string]*rate.Limiter
	auditedAt map[string]time.Time // last refusal of a kind recorded in the audit log, by kind and name
	chain     map[string]any       // last audit chain status, for chainSig
	chainSig  string
}

// New returns the admin handler.
func New(cfg Config) (*Handler, error) {
	var errs []error
	if cfg.Broker == nil {
		errs = append(errs, errors.New("admin: Config.Broker is required"))
	}
	if cfg.Tokens == nil {
		errs = append(errs, errors.New("admin: Config.Tokens is required"))
	}
	if cfg.MutationsPerMinute < 0 {
		errs = append(errs, errors.New("admin: Config.MutationsPerMinute must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MutationsPerMinute == 0 {
		cfg.MutationsPerMinute = 60
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), limiters: map[string]*rate.Limiter{}, auditedAt: map[string]time.Time{}}
	h.routes()
	return h, nil
}

// maxBody bounds request bodies.
const maxBody = 64 << 10

// ServeHTTP sets the security headers and dispatches.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
	if r.TLS != nil {
		hd.Set("Strict-Transport-Security", "max-age=31536000")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	h.mux.ServeHTTP(w, r)
}

type ctxKey struct{}

// identityOf returns the identity the auth middleware stored.
func identityOf(r *http.Request) Identity {
	id, _ := r.Context().Value(ctxKey{}).(Identity)
	return id
}

// authed wraps an API handler: a valid bearer token or admin client
// certificate is required. A change (mutate) passes, in this order, the
// origin check of a certificate-authenticated call, the rate limit of its
// token or certificate (refusals by role count too, so they are bounded)
// and the operator role. Every change that passes authentication is
// audited: handlers record their outcome (record), and authed records the
// calls it refuses and those a handler refused without recording (a
// malformed body); refusals by origin and by the rate limit at most once a
// minute per token or certificate.
func (h *Handler) authed(mutate bool, f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		id, byCert, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		ctx := context.WithValue(r.Context(), ctxKey{}, id)
		if !mutate {
			f(w, r.WithContext(ctx))
			return
		}
		m := &mutation{}
		r = r.WithContext(context.WithValue(ctx, mutationKey{}, m))
		action := actionOf(r)
		// A page elsewhere can make a browser that holds a certificate
		// send changes: they are refused before the rate limit, so that
		// they cannot use up the certificate's changes, and recorded at
		// most once a minute, so that they cannot flood the audit log.
		if byCert {
			if why := crossSite(r); why != "" {
				h.log.Warn("admin: change with a client certificate refused: not from the API's own origin", "certificate", id.Name,
					"remote", r.RemoteAddr, "path", r.URL.Path, "reason", why)
				if h.auditDue("cross-site", id.Name) {
					h.record(r, action, requestTarget(r), errors.New("refused: not from the API's own origin ("+why+"); recorded at most once a minute"))
				}
				writeError(w, http.StatusForbidden, "a change authenticated by a client certificate must come from the API's own origin "+
					"with a JSON body ("+why+")")
				return
			}
		}
		if !h.limiter(id.Name).Allow() {
			h.log.Warn("admin: change refused: rate limit", "token", id.Name, "remote", r.RemoteAddr, "path", r.URL.Path)
			if h.auditDue("rate", id.Name) {
				h.record(r, action, requestTarget(r), errors.New("refused: rate limit; recorded at most once a minute"))
			}
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "too many changes; slow down")
			return
		}
		if id.Role != RoleOperator {
			h.log.Warn("admin: viewer token refused for a change", "token", id.Name, "remote", r.RemoteAddr,
				"method", r.Method, "path", r.URL.Path)
			h.record(r, action, requestTarget(r), errors.New("refused: the viewer role makes no changes"))
			writeError(w, http.StatusForbidden, "this token has the viewer role; changes need an operator token")
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		f(sw, r)
		if !m.recorded {
			h.record(r, action, requestTarget(r), fmt.Errorf("refused: HTTP %d", cmp.Or(sw.code, http.StatusOK)))
		}
	}
}

// mutation is a change in progress; record marks it recorded.
type mutation struct{ recorded bool }

type mutationKey struct{}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// mutationActions names the changes of the API in the audit log, by
// route pattern (TestEveryChangeHasAnAction checks the list).
var mutationActions = map[string]string{
	"POST /api/v1/clients/{id}/kick":            "kick",
	"DELETE /api/v1/retained":                   "retained.delete",
	"POST /api/v1/bans":                         "ban.add",
	"DELETE /api/v1/bans/{id}":                  "ban.remove",
	"POST /api/v1/certificates/{serial}/revoke": "cert.revoke",
	"POST /api/v1/config/reload":                "reload",
	"POST /api/v1/cluster/nodes/{node}/remove":  "cluster.remove_node",
}

// actionOf is the audit name of the change r makes.
func actionOf(r *http.Request) string {
	if a, ok := mutationActions[r.Pattern]; ok {
		return a
	}
	return r.Method + " " + r.URL.Path
}

// requestTarget is what a refused change was aimed at: its path and query.
func requestTarget(r *http.Request) string { return clip(r.URL.RequestURI(), 200) }

// auditDue reports whether a refusal of kind for the token or
// certificate name is to be recorded in the audit log: the first, then at
// most one a minute, so that refusals in bulk cannot flood it.
func (h *Handler) auditDue(kind, name string) bool {
	now := h.cfg.Now()
	key := kind + "\x00" + name
	h.mu.Lock()
	defer h.mu.Unlock()
	if last, ok := h.auditedAt[key]; ok && now.Sub(last) < time.Minute {
		return false
	}
	h.auditedAt[key] = now
	return true
}

// authenticate finds the caller's identity: the bearer token when the
// request carries an Authorization header, else the TLS client
// certificate (byCert). On failure it has answered 401.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (id Identity, byCert, ok bool) {
	auth, hasAuth := r.Header["Authorization"]
	if !hasAuth && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && h.cfg.VerifyClientCert != nil {
		id, ok := h.certIdentity(w, r)
		return id, true, ok
	}
	tok, ok := "", false
	if hasAuth {
		tok, ok = strings.CutPrefix(auth[0], "Bearer ")
	}
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="moat"`)
		writeError(w, http.StatusUnauthorized, "a bearer token (moat admin token create) or an admin client certificate is required")
		return Identity{}, false, false
	}
	id, ok = h.cfg.Tokens.Check(strings.TrimSpace(tok))
	if !ok {
		h.log.Warn("admin: request with an unknown token refused", "remote", r.RemoteAddr, "path", r.URL.Path)
		w.Header().Set("WWW-Authenticate", `Bearer realm="moat", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unknown or revoked token")
		return Identity{}, false, false
	}
	return id, false, true
}

// crossSite says why a request may have been made by a page of another
// origin, or "". A client certificate is an ambient credential: a browser
// that holds one presents it to any page's request, as it sends cookies,
// so a change authenticated by one must show that the API's own origin
// made it. Browsers say where a request comes from (Sec-Fetch-Site,
// Origin), and a page elsewhere cannot send a JSON body without a CORS
// preflight, which this API never answers; a form can only send form and
// text bodies.
func crossSite(r *http.Request) string {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return "Sec-Fetch-Site: " + s
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return "Origin " + o + " is not " + r.Host
		}
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(strings.ToLower(ct)) != "application/json" {
			return "Content-Type is not application/json"
		}
	}
	return ""
}

// certIdentity authenticates by the TLS client certificate: verified
// again on every request (a certificate revoked while its connection
// stays open is refused at once), and mapped to a role by its URI SAN
// (CertificateRole).
func (h *Handler) certIdentity(w http.ResponseWriter, r *http.Request) (Identity, bool) {
	leaf := r.TLS.PeerCertificates[0]
	name := "cert:" + leaf.Subject.CommonName + "/" + strings.ToUpper(leaf.SerialNumber.Text(16))
	refuse := func(why string, err error) (Identity, bool) {
		h.log.Warn("admin: request with a client certificate refused", "certificate", name, "remote", r.RemoteAddr,
			"path", r.URL.Path, "reason", why, "err", err)
		writeError(w, http.StatusUnauthorized, why)
		return Identity{}, false
	}
	if err := h.cfg.VerifyClientCert(r.Context(), r.TLS.PeerCertificates); err != nil {
		return refuse("the client certificate is not valid (unknown issuer, expired or revoked)", err)
	}
	role, ok := CertificateRole(leaf)
	if !ok {
		return refuse("the client certificate carries no admin role (a URI SAN "+CertRoleURIPrefix+"viewer or "+CertRoleURIPrefix+"operator)", nil)
	}
	return Identity{Name: name, Role: role}, true
}

// CertRoleURIPrefix starts the URI SAN that makes a client certificate of
// the built-in CA an admin credential: urn:moat:admin:viewer or
// urn:moat:admin:operator (`moat ca issue device NAME --uri
// urn:moat:admin:operator`). A URN, because the CA's device profile
// allows URI SANs of the urn, spiffe and https schemes only.
const CertRoleURIPrefix = "urn:moat:admin:"

// CertificateRole returns the admin role a certificate's URI SAN names.
// A certificate naming both roles, or an unknown one, has none: the
// issuer's intent is not clear, and the API does not guess.
func CertificateRole(c *x509.Certificate) (Role, bool) {
	var found []Role
	for _, u := range c.URIs {
		s := u.String()
		if rest, ok := strings.CutPrefix(s, CertRoleURIPrefix); ok {
			r, err := ParseRole(rest)
			if err != nil {
				return "", false
			}
			found = append(found, r)
		}
	}
	if len(found) == 0 || slices.ContainsFunc(found, func(r Role) bool { return r != found[0] }) {
		return "", false
	}
	return found[0], true
}

func (h *Handler) limiter(name string) *rate.Limiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.limiters[name]
	if l == nil {
		n := h.cfg.MutationsPerMinute
		l = rate.NewLimiter(rate.Limit(float64(n)/60), max(n/6, 1))
		h.limiters[name] = l
	}
	return l
}

// record logs and audits a mutating call.
func (h *Handler) record(r *http.Request, action, target string, err error) {
	if m, ok := r.Context().Value(mutationKey{}).(*mutation); ok {
		m.recorded = true
	}
	id := identityOf(r)
	res := "ok"
	if err != nil {
		res = err.Error()
	}
	h.log.Info("admin: change", "token", id.Name, "remote", r.RemoteAddr, "action", action, "target", target, "result", res)
	if h.cfg.Auditor != nil {
		h.cfg.Auditor.AdminAction(Action{Token: id.Name, Remote: r.RemoteAddr, Action: action, Target: target, Result: res})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// decodeBody decodes a JSON body strictly; an empty body leaves v as is.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// IsLoopback reports whether addr (host:port) names a loopback address.
// "localhost" counts; any other name does not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
