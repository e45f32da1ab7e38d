package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
)

// newTestHandler serves the API of a real broker (no listener: the
// client-facing tests run against `moat serve` in internal/cli).
func newTestHandler(t *testing.T, cfg Config) (*Handler, string, string) {
	t.Helper()
	srv, err := broker.New(broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	path := filepath.Join(t.TempDir(), TokensFileName)
	viewer, err := CreateToken(path, "v", RoleViewer, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	op, err := CreateToken(path, "o", RoleOperator, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Broker, cfg.Tokens = srv, NewTokens(path)
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h, viewer, op
}

func do(t *testing.T, h http.Handler, method, path, token string, body string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestOpenAPIDocumentsEveryRoute: openapi.json parses, is OpenAPI 3, and
// documents exactly the routes the handler serves, with 403 on every
// mutating one.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	h := &Handler{}
	var served []string
	for _, r := range append(h.apiRoutes(), route{pattern: "GET /metrics"}) {
		method, path, _ := strings.Cut(r.pattern, " ")
		served = append(served, strings.ToLower(method)+" "+path)
		op, ok := doc.Paths[path][strings.ToLower(method)]
		if !ok {
			t.Errorf("%s is not documented in openapi.json", r.pattern)
			continue
		}
		if r.mutate && !bytes.Contains(op, []byte(`"403"`)) {
			t.Errorf("%s changes state but its document lacks the 403 response", r.pattern)
		}
	}
	for path, ops := range doc.Paths {
		for m := range ops {
			if !slices.Contains(served, m+" "+path) {
				t.Errorf("openapi.json documents %s %s, which is not served", m, path)
			}
		}
	}
}

func TestAuthAndRoles(t *testing.T) {
	reloads := 0
	h, viewer, op := newTestHandler(t, Config{Reload: func(context.Context) error { reloads++; return nil }})
	for _, tok := range []string{"", "moat_AAAA", "Basic x"} {
		if rec := do(t, h, "GET", "/api/v1/clients", tok, ""); rec.Code != 401 || rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("token %q: %d", tok, rec.Code)
		}
	}
	if rec := do(t, h, "GET", "/api/v1/clients", viewer, ""); rec.Code != 200 {
		t.Errorf("viewer read: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, h, "POST", "/api/v1/config/reload", viewer, ""); rec.Code != 403 || reloads != 0 {
		t.Errorf("viewer reload: %d, reloads %d", rec.Code, reloads)
	}
	if rec := do(t, h, "POST", "/api/v1/config/reload", op, ""); rec.Code != 200 || reloads != 1 {
		t.Errorf("operator reload: %d %s, reloads %d", rec.Code, rec.Body, reloads)
	}
	if rec := do(t, h, "GET", "/api/v1/nothing", viewer, ""); rec.Code != 404 {
		t.Errorf("unknown endpoint: %d", rec.Code)
	}
	if rec := do(t, h, "GET", "/api/v1/nothing", "", ""); rec.Code != 401 {
		t.Errorf("unknown endpoint without a token: %d; want 401 (no probing)", rec.Code)
	}
	if rec := do(t, h, "POST", "/index.html", "", ""); rec.Code != 405 {
		t.Errorf("POST to a dashboard file: %d", rec.Code)
	}
}

// TestSecurityMutationRateLimit: a stolen operator token cannot be used
// to hammer the broker with changes (mass kicks, ban floods): changes
// beyond the per-token rate are refused with 429, while reads go on.
func TestSecurityMutationRateLimit(t *testing.T) {
	h, viewer, op := newTestHandler(t, Config{MutationsPerMinute: 6, Reload: func(context.Context) error { return nil }})
	ok, limited := 0, 0
	for range 20 {
		switch do(t, h, "POST", "/api/v1/config/reload", op, "").Code {
		case 200:
			ok++
		case 429:
			limited++
		}
	}
	if ok == 0 || ok > 2 || limited == 0 {
		t.Fatalf("20 changes at once: %d allowed, %d limited; want a burst of 1", ok, limited)
	}
	if rec := do(t, h, "GET", "/api/v1/overview", viewer, ""); rec.Code != 200 {
		t.Fatalf("reads are limited too: %d", rec.Code)
	}
}

type recordingAuditor struct{ got []Action }

func (r *recordingAuditor) AdminAction(a Action) { r.got = append(r.got, a) }

func TestChangesAreAudited(t *testing.T) {
	aud := &recordingAuditor{}
	h, _, op := newTestHandler(t, Config{Auditor: aud, Reload: func(context.Context) error { return errors.New("bad file") }})
	do(t, h, "POST", "/api/v1/config/reload", op, "")
	do(t, h, "POST", "/api/v1/clients/nobody/kick", op, `{"reason":"x"}`)
	if len(aud.got) != 2 || aud.got[0].Action != "reload" || aud.got[0].Result != "bad file" || aud.got[0].Token != "o" ||
		aud.got[1].Action != "kick" || aud.got[1].Target != "nobody" {
		t.Fatalf("audited: %+v", aud.got)
	}
}

func TestTokensFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", TokensFileName)
	tok, err := CreateToken(path, "ops", RoleOperator, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", err, fi.Mode())
	}
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte(tok[len(tokenPrefix):])) {
		t.Fatal("token stored in clear")
	}
	if _, err := CreateToken(path, "ops", RoleViewer, time.Now(), nil); err == nil {
		t.Fatal("duplicate name accepted")
	}
	for _, bad := range []string{"", "a b", "x/y", strings.Repeat("a", 65)} {
		if _, err := CreateToken(path, bad, RoleViewer, time.Now(), nil); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	if _, err := ParseRole("admin"); err == nil {
		t.Error("unknown role accepted")
	}
	ts := NewTokens(path)
	if id, ok := ts.Check(tok); !ok || id.Name != "ops" || id.Role != RoleOperator {
		t.Fatalf("check: %v %v", id, ok)
	}
	if _, ok := ts.Check(tok + "x"); ok {
		t.Fatal("altered token accepted")
	}
	if err := RevokeToken(path, "ops"); err != nil {
		t.Fatal(err)
	}
	// A revocation within the file system's time granularity still
	// changes the size.
	if _, ok := ts.Check(tok); ok {
		t.Fatal("revoked token accepted")
	}
	// A corrupt file accepts nothing (fail closed).
	tok2, _ := CreateToken(path, "v", RoleViewer, time.Now(), nil)
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, ok := ts.Check(tok2); ok || ts.Err() == nil {
		t.Fatal("a corrupt token file still accepts tokens")
	}
}

func TestRedact(t *testing.T) {
	var v any
	json.Unmarshal([]byte(`{"listeners":[{"tls":{"key_password":"hunter2","cert":"c.pem"}}],"auth":{"ldap":{"bind_password":"p","url":"ldap://x"},"jwt":{"client_secret":"s"}},"admin":{"listen":"127.0.0.1:1"}}`), &v)
	out, _ := json.Marshal(Redact(v))
	for _, secret := range []string{"hunter2", `"p"`, `"s"`} {
		if bytes.Contains(out, []byte(secret)) {
			t.Errorf("secret %s not redacted: %s", secret, out)
		}
	}
	for _, keep := range []string{"c.pem", "ldap://x", "127.0.0.1:1"} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("%s redacted: %s", keep, out)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.9.9.9:0": true,
		"0.0.0.0:1": false, ":1": false, "10.0.0.1:1": false, "example.com:1": false, "127.0.0.1": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
}

// TestAuditTail reads a real audit log: its last entries and a verified
// chain; an edited entry turns the chain status to not verified.
func TestAuditTail(t *testing.T) {
	dir := t.TempDir()
	l, err := audit.Open(audit.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		l.Record(audit.Event{Type: audit.TypeAdminAction, Fields: []audit.Field{audit.String("action", "test"), audit.Int("n", int64(i))}})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	file, pub := filepath.Join(dir, audit.DefaultFile), filepath.Join(dir, audit.PubFile)
	h, viewer, _ := newTestHandler(t, Config{AuditFile: file, AuditKeyFile: pub})
	var resp struct {
		Chain   map[string]any    `json:"chain"`
		Entries []json.RawMessage `json:"entries"`
	}
	get := func() {
		t.Helper()
		rec := do(t, h, "GET", "/api/v1/audit?n=3", viewer, "")
		if rec.Code != 200 {
			t.Fatalf("audit: %d %s", rec.Code, rec.Body)
		}
		resp.Chain, resp.Entries = nil, nil
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatal(err)
		}
	}
	get()
	if resp.Chain["ok"] != true || len(resp.Entries) != 3 {
		t.Fatalf("chain %v, %d entries", resp.Chain, len(resp.Entries))
	}
	data, _ := os.ReadFile(file)
	edited := bytes.Replace(data, []byte(`"n":2`), []byte(`"n":7`), 1)
	if bytes.Equal(edited, data) {
		t.Fatalf("no entry to edit in:\n%s", data)
	}
	os.WriteFile(file, edited, 0o600)
	get()
	if resp.Chain["ok"] != false || resp.Chain["problem"] == "" {
		t.Fatalf("edited log: chain %v", resp.Chain)
	}
}

// A reload applied on the node but not sent to the cluster answers 503
// with "reloaded": true; a refused one 409.
func TestReloadNotShared(t *testing.T) {
	var answer error
	h, _, op := newTestHandler(t, Config{Reload: func(context.Context) error { return answer }})
	answer = fmt.Errorf("acl.conf not sent: %w", ErrNotShared)
	rec := do(t, h, "POST", "/api/v1/config/reload", op, "")
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"reloaded": true`) ||
		!strings.Contains(rec.Body.String(), "acl.conf not sent") {
		t.Errorf("not shared: %d %s", rec.Code, rec.Body)
	}
	answer = errors.New("a setting needs a restart")
	if rec := do(t, h, "POST", "/api/v1/config/reload", op, ""); rec.Code != http.StatusConflict {
		t.Errorf("refused: %d %s", rec.Code, rec.Body)
	}
}
