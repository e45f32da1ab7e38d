package admin

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// recAuditor keeps the actions the handler records.
type recAuditor struct {
	mu   sync.Mutex
	seen []Action
}

func (a *recAuditor) AdminAction(x Action) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, x)
}

func (a *recAuditor) take() []Action {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.seen
	a.seen = nil
	return out
}

// TestEveryChangeHasAnAction: each mutating route has its audit name, and
// every name belongs to a mutating route.
func TestEveryChangeHasAnAction(t *testing.T) {
	mutating := map[string]bool{}
	for _, r := range (&Handler{}).apiRoutes() {
		if r.mutate {
			mutating[r.pattern] = true
			if mutationActions[r.pattern] == "" {
				t.Errorf("%s changes state but has no audit action name", r.pattern)
			}
		}
	}
	for p := range mutationActions {
		if !mutating[p] {
			t.Errorf("audit action %q names %s, which is not a mutating route", mutationActions[p], p)
		}
	}
}

// TestSecurityRefusedChangesAudited: changes the API refuses are audited
// too: a viewer's, a malformed one, and (once a minute per token) those
// over the rate limit; reads are not.
func TestSecurityRefusedChangesAudited(t *testing.T) {
	aud := &recAuditor{}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h, viewer, op := newTestHandler(t, Config{Auditor: aud, Now: clock,
		Reload: func(context.Context) error { return nil }})

	if rec := do(t, h, "GET", "/api/v1/clients", op, ""); rec.Code != 200 || len(aud.take()) != 0 {
		t.Fatalf("a read: %d, or it was audited", rec.Code)
	}
	do(t, h, "POST", "/api/v1/config/reload", viewer, "")
	do(t, h, "POST", "/api/v1/clients/dev1/kick", op, "{not json")
	do(t, h, "DELETE", "/api/v1/retained?topic=a/%23", op, "")
	do(t, h, "POST", "/api/v1/config/reload", op, "")
	got := aud.take()
	want := []struct{ token, action, target, result string }{
		{"v", "reload", "/api/v1/config/reload", "refused: the viewer role makes no changes"},
		{"o", "kick", "/api/v1/clients/dev1/kick", "refused: HTTP 400"},
		{"o", "retained.delete", "/api/v1/retained?topic=a/%23", "refused: HTTP 400"},
		{"o", "reload", "configuration", "ok"},
	}
	if len(got) != len(want) {
		t.Fatalf("audited %+v, want %d actions", got, len(want))
	}
	for i, w := range want {
		if g := got[i]; g.Token != w.token || g.Action != w.action || g.Target != w.target || g.Result != w.result || g.Remote == "" {
			t.Errorf("action %d: %+v, want %+v", i, g, w)
		}
	}

	// Spend the operator's burst: refusals by the limiter are recorded
	// once a minute.
	limited := func() (n int) {
		for _, a := range aud.take() {
			if strings.HasPrefix(a.Result, "refused: rate limit") {
				n++
			}
		}
		return n
	}
	for i := 0; do(t, h, "POST", "/api/v1/config/reload", op, "").Code != 429; i++ {
		if i > 100 {
			t.Fatal("the rate limit never refused")
		}
	}
	// The limiter refills on real time (one a second): most of these are
	// refused, and none of the refusals is recorded again.
	for range 5 {
		do(t, h, "POST", "/api/v1/config/reload", op, "")
	}
	if n := limited(); n != 1 {
		t.Fatalf("%d rate-limit refusals audited, want 1", n)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	for do(t, h, "POST", "/api/v1/config/reload", op, "").Code != 429 {
	}
	if n := limited(); n != 1 {
		t.Fatalf("a minute later: %d rate-limit refusals audited, want 1", n)
	}
}
