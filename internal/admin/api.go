package admin

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/pki"
)

//go:embed openapi.json
var openAPI []byte

//go:embed web
var webFiles embed.FS

type route struct {
	pattern string // "METHOD /path"
	mutate  bool   // operator role, rate-limited, audited
	f       http.HandlerFunc
}

// apiRoutes lists every API endpoint; openapi.json documents each of them
// (a test checks both lists agree).
func (h *Handler) apiRoutes() []route {
	return []route{
		{"GET /api/v1/whoami", false, h.whoami},
		{"GET /api/v1/openapi.json", false, h.openapi},
		{"GET /api/v1/overview", false, h.overview},
		{"GET /api/v1/listeners", false, h.listeners},
		{"GET /api/v1/clients", false, h.clients},
		{"POST /api/v1/clients/{id}/kick", true, h.kick},
		{"GET /api/v1/sessions", false, h.sessions},
		{"GET /api/v1/subscriptions", false, h.subscriptions},
		{"GET /api/v1/retained", false, h.retained},
		{"DELETE /api/v1/retained", true, h.deleteRetained},
		{"GET /api/v1/bans", false, h.bans},
		{"POST /api/v1/bans", true, h.addBan},
		{"DELETE /api/v1/bans/{id}", true, h.removeBan},
		{"GET /api/v1/certificates", false, h.certificates},
		{"POST /api/v1/certificates/{serial}/revoke", true, h.revoke},
		{"GET /api/v1/config", false, h.config},
		{"POST /api/v1/config/reload", true, h.reload},
		{"GET /api/v1/audit", false, h.audit},
		{"GET /api/v1/posture", false, h.posture},
		{"GET /api/v1/cluster", false, h.cluster},
		{"POST /api/v1/cluster/nodes/{node}/remove", true, h.removeNode},
	}
}

func (h *Handler) routes() {
	for _, e := range h.apiRoutes() {
		h.mux.HandleFunc(e.pattern, h.authed(e.mutate, e.f))
	}
	h.mux.HandleFunc("GET /metrics", h.authed(false, func(w http.ResponseWriter, r *http.Request) {
		if h.cfg.Metrics == nil {
			writeError(w, http.StatusNotImplemented, "metrics are not configured")
			return
		}
		h.cfg.Metrics.ServeHTTP(w, r)
	}))
	h.mux.HandleFunc("/api/", h.authed(false, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint; see /api/v1/openapi.json")
	}))
	sub, _ := fs.Sub(webFiles, "web")
	static := http.FileServerFS(sub)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "the dashboard's files are read-only")
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		static.ServeHTTP(w, r)
	})
}

func (h *Handler) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, identityOf(r))
}

func (h *Handler) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPI)
}

type overviewJSON struct {
	Time               time.Time `json:"time"`
	UptimeSeconds      int64     `json:"uptime_seconds"`
	Connections        int64     `json:"connections"`
	ConnectionsMaximum int64     `json:"connections_maximum"`
	Sessions           int64     `json:"sessions"`
	Subscriptions      int64     `json:"subscriptions"`
	Retained           int64     `json:"retained"`
	MessagesReceived   int64     `json:"messages_received"`
	MessagesSent       int64     `json:"messages_sent"`
	BytesReceived      int64     `json:"bytes_received"`
	BytesSent          int64     `json:"bytes_sent"`
	Queued             int64     `json:"queued"`
	Dropped            int64     `json:"dropped"`
	ConnectRefused     int64     `json:"connect_refused"`
	TLSFailures        int64     `json:"tls_failures"`
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	st := h.cfg.Broker.Stats()
	writeJSON(w, http.StatusOK, overviewJSON{
		Time: h.cfg.Now().UTC(), UptimeSeconds: int64(st.Uptime / time.Second),
		Connections: st.ClientsConnected, ConnectionsMaximum: st.ClientsMaximum, Sessions: st.Sessions,
		Subscriptions: st.Subscriptions, Retained: st.Retained,
		MessagesReceived: st.MessagesReceived, MessagesSent: st.MessagesSent, BytesReceived: st.BytesReceived, BytesSent: st.BytesSent,
		Queued: st.Queued, Dropped: st.DroppedQueueFull + st.DroppedQoS0Offline + st.DroppedSlowClient + st.DroppedOversize +
			st.Expired + st.DroppedUnauthorized + st.DroppedSessionEnd,
		ConnectRefused: st.ConnectRefused + st.ConnectionsOverCap, TLSFailures: st.TLSFailures,
	})
}

func (h *Handler) listeners(w http.ResponseWriter, r *http.Request) {
	var ls []Listener
	if h.cfg.Listeners != nil {
		ls = h.cfg.Listeners()
	}
	if ls == nil {
		ls = []Listener{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"listeners": ls})
}

// CertInfo describes a client's certificate.
type CertInfo struct {
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"not_after"`
	Fingerprint string    `json:"sha256_fingerprint"`
}

// ClientJSON is one connected client.
type ClientJSON struct {
	ClientID         string    `json:"client_id"`
	Username         string    `json:"username,omitempty"`
	Identity         string    `json:"identity,omitempty"`
	Anonymous        bool      `json:"anonymous"`
	Listener         string    `json:"listener"`
	Remote           string    `json:"remote_address"`
	ProtocolVersion  string    `json:"protocol_version"`
	ConnectedSince   time.Time `json:"connected_since"`
	KeepAliveSeconds int       `json:"keep_alive_seconds"`
	TLSVersion       string    `json:"tls_version,omitempty"`
	TLSGroup         string    `json:"tls_group,omitempty"`
	Certificate      *CertInfo `json:"certificate,omitempty"`
}

func protoName(level byte) string {
	switch level {
	case 3:
		return "3.1"
	case 4:
		return "3.1.1"
	case 5:
		return "5.0"
	}
	return strconv.Itoa(int(level))
}

func clientJSON(ci *broker.ClientInfo) ClientJSON {
	c := &ci.Client
	out := ClientJSON{
		ClientID: c.ClientID, Username: c.Username, Identity: c.Username, Anonymous: c.Anonymous, Listener: c.Listener,
		ProtocolVersion: protoName(ci.ProtocolLevel), ConnectedSince: ci.ConnectedAt.UTC(), KeepAliveSeconds: int(ci.KeepAlive / time.Second),
	}
	if c.Remote != nil {
		out.Remote = c.Remote.String()
	}
	if cs, ok := c.TLS(); ok {
		out.TLSVersion = tls.VersionName(cs.Version)
		if cs.CurveID != 0 {
			out.TLSGroup = cs.CurveID.String()
		}
		if len(cs.PeerCertificates) > 0 {
			leaf := cs.PeerCertificates[0]
			fp := sha256.Sum256(leaf.Raw)
			out.Certificate = &CertInfo{
				Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), Serial: pki.SerialString(leaf.SerialNumber),
				NotAfter: leaf.NotAfter.UTC(), Fingerprint: hex.EncodeToString(fp[:]),
			}
		}
	}
	return out
}

func (h *Handler) clientList() []ClientJSON {
	cis := h.cfg.Broker.Clients()
	out := make([]ClientJSON, 0, len(cis))
	for i := range cis {
		out = append(out, clientJSON(&cis[i]))
	}
	return out
}

func (h *Handler) clients(w http.ResponseWriter, r *http.Request) {
	list := h.clientList()
	if q := strings.ToLower(r.URL.Query().Get("q")); q != "" {
		list = slices.DeleteFunc(list, func(c ClientJSON) bool {
			hay := strings.ToLower(c.ClientID + "\x00" + c.Username + "\x00" + c.Remote)
			if c.Certificate != nil {
				hay += "\x00" + strings.ToLower(c.Certificate.Subject+"\x00"+c.Certificate.Serial)
			}
			return !strings.Contains(hay, q)
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"clients": list})
}

type reasonBody struct {
	Reason string `json:"reason"`
}

func (h *Handler) kick(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var body reasonBody
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	reason := cmp.Or(clip(body.Reason, 200), "disconnected by an operator")
	if !h.cfg.Broker.Kick(id, reason) {
		h.record(r, "kick", id, errors.New("not connected"))
		writeError(w, http.StatusNotFound, "no client with this ID is connected")
		return
	}
	h.record(r, "kick", id, nil)
	writeJSON(w, http.StatusOK, map[string]any{"kicked": id})
}

func (h *Handler) sessions(w http.ResponseWriter, r *http.Request) {
	ss := h.cfg.Broker.Sessions()
	type sessJSON struct {
		ClientID      string    `json:"client_id"`
		Created       time.Time `json:"created"`
		Online        bool      `json:"online"`
		ExpirySeconds int64     `json:"expiry_seconds"`
		Inflight      int       `json:"inflight"`
		Queued        int       `json:"queued"`
		Subscriptions int       `json:"subscriptions"`
	}
	out := make([]sessJSON, 0, len(ss))
	for _, s := range ss {
		exp := int64(s.Expiry / time.Second)
		if s.Expiry < 0 {
			exp = -1
		}
		out = append(out, sessJSON{s.ClientID, s.Created.UTC(), s.Online, exp, s.Inflight, s.Queued, s.Subscriptions})
	}
	writeJSON(w, http.StatusOK, map[string]any{"sessions": out})
}

func (h *Handler) subscriptions(w http.ResponseWriter, r *http.Request) {
	subs := h.cfg.Broker.Subscriptions()
	type subJSON struct {
		ClientID string `json:"client_id"`
		Filter   string `json:"filter"`
		Group    string `json:"share_group,omitempty"`
		QoS      byte   `json:"qos"`
	}
	out := make([]subJSON, 0, len(subs))
	for _, s := range subs {
		out = append(out, subJSON{s.ClientID, s.Filter, s.Group, s.QoS})
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscriptions": out})
}

const maxList = 1000

func (h *Handler) retained(w http.ResponseWriter, r *http.Request) {
	filter := cmp.Or(r.URL.Query().Get("filter"), "#")
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxList {
			writeError(w, http.StatusBadRequest, "limit must be 1 to 1000")
			return
		}
		limit = n
	}
	if err := validFilter(filter); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	msgs, more := h.cfg.Broker.RetainedMatch(filter, limit)
	type retJSON struct {
		Topic   string    `json:"topic"`
		QoS     byte      `json:"qos"`
		Size    int       `json:"size"`
		Preview string    `json:"preview"`
		From    string    `json:"from,omitempty"`
		Created time.Time `json:"created"`
	}
	out := make([]retJSON, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, retJSON{m.Topic, m.QoS, m.Size, printable(m.Preview), m.From, m.Created.UTC()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"retained": out, "more": more})
}

func (h *Handler) deleteRetained(w http.ResponseWriter, r *http.Request) {
	t := r.URL.Query().Get("topic")
	if t == "" || strings.ContainsAny(t, "+#") {
		writeError(w, http.StatusBadRequest, "give ?topic=NAME (a topic name, no wildcards)")
		return
	}
	if !h.cfg.Broker.DeleteRetained(t) {
		h.record(r, "retained.delete", t, errors.New("no retained message"))
		writeError(w, http.StatusNotFound, "no retained message on this topic")
		return
	}
	h.record(r, "retained.delete", t, nil)
	writeJSON(w, http.StatusOK, map[string]any{"deleted": t})
}

func (h *Handler) bans(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Bans == nil {
		writeError(w, http.StatusNotImplemented, "the ban list is not configured")
		return
	}
	bans := h.cfg.Bans.Bans()
	if bans == nil {
		bans = []guard.Ban{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"bans": bans})
}

type banBody struct {
	Kind     guard.Kind `json:"kind"`
	Value    string     `json:"value"`
	Duration string     `json:"duration"` // Go duration; "" without end
	Reason   string     `json:"reason"`
}

func (h *Handler) addBan(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Bans == nil {
		writeError(w, http.StatusNotImplemented, "the ban list is not configured")
		return
	}
	var body banBody
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	var d time.Duration
	if body.Duration != "" {
		var err error
		if d, err = time.ParseDuration(body.Duration); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, "duration must be a positive Go duration such as 30m or 24h")
			return
		}
	}
	b, err := guard.NewManualBan(body.Kind, body.Value, d, clip(body.Reason, 200), h.cfg.Now(), rand.Reader)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	stored, err := h.cfg.Bans.AddBan(b)
	h.record(r, "ban.add", string(b.Kind)+" "+b.Value, err)
	switch {
	case errors.Is(err, guard.ErrBanListFull):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, guard.ErrNotReplicated):
		// In force on this node; the other nodes do not enforce it.
		writeError(w, http.StatusServiceUnavailable, "ban "+stored.ID+" "+err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusCreated, stored)
	}
}

func (h *Handler) removeBan(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Bans == nil {
		writeError(w, http.StatusNotImplemented, "the ban list is not configured")
		return
	}
	id := r.PathValue("id")
	_, err := h.cfg.Bans.RemoveBan(id)
	h.record(r, "ban.remove", id, err)
	switch {
	case errors.Is(err, guard.ErrNoBan):
		writeError(w, http.StatusNotFound, "no such ban")
	case errors.Is(err, guard.ErrNotReplicated):
		writeError(w, http.StatusServiceUnavailable, "ban "+id+" removed "+err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]any{"removed": id})
	}
}

type certJSON struct {
	Serial   string    `json:"serial"`
	Profile  string    `json:"profile"`
	Subject  string    `json:"subject"`
	SANs     []string  `json:"sans,omitempty"`
	NotAfter time.Time `json:"not_after"`
	Status   string    `json:"status"`
}

func (h *Handler) openCA(w http.ResponseWriter) *pki.CA {
	if h.cfg.CA == nil {
		writeError(w, http.StatusNotImplemented, "the built-in CA is not in use")
		return nil
	}
	ca, err := h.cfg.CA()
	if err != nil {
		writeError(w, http.StatusNotImplemented, "the built-in CA cannot be opened: "+err.Error())
		return nil
	}
	return ca
}

func (h *Handler) certificates(w http.ResponseWriter, r *http.Request) {
	var f pki.ListFilter
	if s := r.URL.Query().Get("expiring"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, "expiring must be a positive Go duration such as 720h")
			return
		}
		f.ExpiringWithin = d
	}
	ca := h.openCA(w)
	if ca == nil {
		return
	}
	recs, err := ca.List(f)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	now := h.cfg.Now()
	out := make([]certJSON, 0, len(recs))
	for _, rec := range recs {
		out = append(out, certJSON{rec.Serial, string(rec.Profile), rec.Subject, rec.SANs(), rec.NotAfter.UTC(), string(rec.Status(now))})
	}
	writeJSON(w, http.StatusOK, map[string]any{"certificates": out})
}

func (h *Handler) revoke(w http.ResponseWriter, r *http.Request) {
	serial, err := pki.NormalizeSerial(r.PathValue("serial"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var body reasonBody
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	reason := pki.RevocationReason(0)
	if body.Reason != "" {
		if reason, err = pki.ParseReason(body.Reason); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	ca := h.openCA(w)
	if ca == nil {
		return
	}
	rec, err := ca.Revoke(serial, reason)
	h.record(r, "cert.revoke", serial, err)
	if err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, certJSON{rec.Serial, string(rec.Profile), rec.Subject, rec.SANs(), rec.NotAfter.UTC(), string(rec.Status(h.cfg.Now()))})
}

func (h *Handler) config(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Config == nil {
		writeError(w, http.StatusNotImplemented, "the configuration is not available")
		return
	}
	data, err := json.Marshal(h.cfg.Config())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, Redact(v))
}

// secretWords mark configuration keys whose values are secrets.
var secretWords = []string{"password", "secret", "token", "passphrase", "private", "credential"}

// Redact replaces the values of map keys that name a secret with
// "[redacted]", at any depth.
func Redact(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			lk := strings.ToLower(k)
			if slices.ContainsFunc(secretWords, func(w string) bool { return strings.Contains(lk, w) }) && x != nil && x != "" {
				t[k] = "[redacted]"
				continue
			}
			t[k] = Redact(x)
		}
	case []any:
		for i := range t {
			t[i] = Redact(t[i])
		}
	}
	return v
}

func (h *Handler) reload(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not available")
		return
	}
	err := h.cfg.Reload(r.Context())
	h.record(r, "reload", "configuration", err)
	if errors.Is(err, ErrNotShared) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error(), "reloaded": true, "shared": false})
		return
	}
	if err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"reloaded": true})
}

// maxAuditTail bounds the entries the audit endpoint returns, and
// auditTailBytes how much of the file's end it reads for them.
const (
	maxAuditTail   = 500
	auditTailBytes = 1 << 20
)

func (h *Handler) audit(w http.ResponseWriter, r *http.Request) {
	if h.cfg.AuditFile == "" {
		writeError(w, http.StatusNotImplemented, "the audit log is not configured")
		return
	}
	n := 100
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > maxAuditTail {
			writeError(w, http.StatusBadRequest, "n must be 1 to 500")
			return
		}
		n = v
	}
	chain := h.auditChain()
	lines, terr := tailLines(h.cfg.AuditFile, n)
	if terr != nil && !errors.Is(terr, os.ErrNotExist) {
		writeError(w, http.StatusInternalServerError, terr.Error())
		return
	}
	entries := make([]json.RawMessage, 0, len(lines))
	for _, l := range lines {
		if json.Valid(l) {
			entries = append(entries, json.RawMessage(l))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"chain": chain, "entries": entries})
}

// auditChain verifies the audit log, reusing the last result while the
// log and its key file are unchanged (a log holds up to 64 MiB).
func (h *Handler) auditChain() map[string]any {
	sig := fileSig(h.cfg.AuditFile) + fileSig(h.cfg.AuditKeyFile)
	h.mu.Lock()
	if h.chainSig == sig && h.chain != nil {
		c := h.chain
		h.mu.Unlock()
		return c
	}
	h.mu.Unlock()
	chain := map[string]any{}
	keys, err := audit.ReadPublicKeys(h.cfg.AuditKeyFile)
	if err == nil {
		var rep *audit.Report
		rep, err = audit.Verify([]string{h.cfg.AuditFile}, audit.VerifyOptions{Keys: keys, Live: true})
		if err == nil {
			chain["entries"] = rep.Entries
			chain["last_seq"] = rep.LastSeq
			chain["checkpoints"] = rep.Checkpoints
			chain["last_checkpoint"] = rep.LastCheckpointTime
			chain["warnings"] = rep.Warnings
		}
	}
	chain["ok"] = err == nil
	if err != nil {
		chain["problem"] = err.Error()
	}
	h.mu.Lock()
	h.chain, h.chainSig = chain, sig
	h.mu.Unlock()
	return chain
}

// fileSig identifies a file's version by size and modification time.
func fileSig(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing;"
	}
	return strconv.FormatInt(fi.Size(), 10) + "/" + strconv.FormatInt(fi.ModTime().UnixNano(), 10) + ";"
}

// tailLines returns the last n complete lines of the file, newest last.
func tailLines(path string, n int) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-auditTailBytes, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, err
	}
	if off > 0 {
		if i := strings.IndexByte(string(data), '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	var lines [][]byte
	for l := range strings.SplitSeq(strings.TrimRight(string(data), "\n"), "\n") {
		if l != "" {
			lines = append(lines, []byte(l))
		}
	}
	return lines[max(len(lines)-n, 0):], nil
}

// clip shortens an operator's text to at most n bytes of valid UTF-8.
func clip(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}

// printable renders a payload preview: UTF-8 text as is, anything else as
// hex.
func printable(b []byte) string {
	s := string(b)
	for _, r := range s {
		if r == 0xFFFD || r < 0x20 && r != '\n' && r != '\t' {
			return "hex:" + hex.EncodeToString(b)
		}
	}
	return s
}

func validFilter(f string) error {
	if len(f) > 65535 {
		return errors.New("filter too long")
	}
	for i, level := range strings.Split(f, "/") {
		if strings.Contains(level, "#") && (level != "#" || i != strings.Count(f, "/")) {
			return errors.New("filter: # must be the last level on its own")
		}
		if strings.Contains(level, "+") && level != "+" {
			return errors.New("filter: + must be a level on its own")
		}
	}
	return nil
}
