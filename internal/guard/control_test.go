package guard

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveControl serves g's control socket in dir until the test ends.
func serveControl(t *testing.T, g *Guard, dir string, record func(ControlAction)) string {
	t.Helper()
	path := filepath.Join(dir, ControlSocketName)
	ln, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.ServeControl(ln, record) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// TestControlSocket: `moat ban`'s requests through the control socket
// take effect before the answer (the live client's OnBan has run, the
// ban is in the store), honour max_bans, are recorded for the audit
// trail, and the socket file is private to the broker's user.
func TestControlSocket(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	st := &memStore{}
	g, _ := newGuard(t, Config{BanStore: st, MaxBans: 2}, clk, nil)
	var mu sync.Mutex
	var matched []string
	g.OnBan(func(m Match) { mu.Lock(); matched = append(matched, m.Ban.Value); mu.Unlock() })
	var actions []ControlAction
	path := serveControl(t, g, dir, func(a ControlAction) { mu.Lock(); actions = append(actions, a); mu.Unlock() })
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket: %v %v; want a socket, mode 0600", fi.Mode(), err)
	}

	cc := ControlClient{Path: path}
	b, err := NewManualBan(KindClientID, "victim", time.Hour, "test", clk.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cc.Add(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != b.ID || got.Value != "victim" {
		t.Fatalf("answer %+v", got)
	}
	// In force, stored and reported before the answer: nothing to wait for.
	if _, ok := g.BannedIdentity(Identity{ClientID: "victim"}); !ok {
		t.Error("not in force when Add returned")
	}
	if bans, _ := st.snapshot(); len(bans) != 1 {
		t.Errorf("store holds %+v", bans)
	}
	mu.Lock()
	if len(matched) != 1 || matched[0] != "victim" {
		t.Errorf("OnBan calls %v", matched)
	}
	mu.Unlock()

	list, err := cc.List()
	if err != nil || len(list) != 1 || list[0].ID != b.ID {
		t.Fatalf("list: %+v %v", list, err)
	}
	b2, _ := NewManualBan(KindUsername, "u2", 0, "", clk.Now(), rand.Reader)
	if _, err := cc.Add(b2); err != nil {
		t.Fatal(err)
	}
	b3, _ := NewManualBan(KindUsername, "u3", 0, "", clk.Now(), rand.Reader)
	if _, err := cc.Add(b3); err == nil || !strings.Contains(err.Error(), "max_bans") {
		t.Errorf("a ban past max_bans: %v", err)
	}
	if _, err := cc.Add(Ban{ID: "zz", Kind: KindIP, Value: "300.0.0.1"}); err == nil {
		t.Error("an invalid ban was accepted")
	}
	if r, err := cc.Remove(b.ID); err != nil || r.ID != b.ID {
		t.Fatalf("remove: %+v %v", r, err)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "victim"}); ok {
		t.Error("still banned after Remove returned")
	}
	if _, err := cc.Remove(b.ID); err == nil || !strings.Contains(err.Error(), "no ban with ID") {
		t.Errorf("removing twice: %v", err)
	}
	mu.Lock()
	var results []string
	for _, a := range actions {
		results = append(results, a.Action+" "+a.Result)
		if !strings.HasPrefix(a.Peer, "uid ") && a.Peer != "local" {
			t.Errorf("peer %q", a.Peer)
		}
	}
	mu.Unlock()
	if len(results) != 6 || results[0] != "ban.add ok" || results[3] == "ban.add ok" || results[4] != "ban.remove ok" || results[5] == "ban.remove ok" {
		t.Errorf("recorded %q", results)
	}

	// A malformed request is answered with an error and changes nothing.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"op":"add","ban":{"id":"ab"},"extra":1}` + "\n"))
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "malformed request") {
		t.Errorf("malformed request answered %q", buf[:n])
	}
}

// TestControlSocketAbsent: without a broker `moat ban` is told so
// (ErrNoControl), for a missing socket and for one a stopped broker left
// behind; ListenControl replaces such a socket, and refuses to take over
// one another broker answers on.
func TestControlSocketAbsent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ControlSocketName)
	if _, err := (ControlClient{Path: path}).List(); !errors.Is(err, ErrNoControl) {
		t.Fatalf("no socket: %v", err)
	}
	// A socket file nobody listens on, as a killed broker leaves it.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := (ControlClient{Path: path}).List(); !errors.Is(err, ErrNoControl) {
		t.Fatalf("stale socket: %v", err)
	}
	g, _ := newGuard(t, Config{}, newClock(), nil)
	serveControl(t, g, dir, nil)
	if _, err := (ControlClient{Path: path}).List(); err != nil {
		t.Fatalf("after replacing the stale socket: %v", err)
	}
	if _, err := ListenControl(path); err == nil || !strings.Contains(err.Error(), "another broker") {
		t.Errorf("second broker on the socket: %v", err)
	}
	if _, err := ListenControl(filepath.Join(dir, strings.Repeat("d", 120), ControlSocketName)); err == nil {
		t.Error("a path too long for a Unix socket was accepted")
	}
}

// TestControlSocketNotReplicated: a ban that the cluster refused is in
// force here, and moat ban's side is told both the ban and the refusal;
// so is a removal.
func TestControlSocketNotReplicated(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{BanStore: &memStore{}}, clk, nil)
	refusal := errors.New("cluster unreachable: 3 security changes pending; not applied cluster-wide")
	var calls []string
	g.Replicate(func(id string, removed bool) error {
		calls = append(calls, fmt.Sprintf("%s %v", id, removed))
		return refusal
	})
	cc := ControlClient{Path: serveControl(t, g, t.TempDir(), nil)}
	b, err := NewManualBan(KindClientID, "victim", time.Hour, "test", clk.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cc.Add(b)
	if !errors.Is(err, ErrNotReplicated) || !strings.Contains(err.Error(), refusal.Error()) {
		t.Fatalf("add: %v; want ErrNotReplicated with the refusal", err)
	}
	if got.ID != b.ID {
		t.Fatalf("add answered ban %q, want %q", got.ID, b.ID)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "victim"}); !ok {
		t.Fatal("a ban the cluster refused is not in force here")
	}
	removed, err := cc.Remove(b.ID)
	if !errors.Is(err, ErrNotReplicated) || removed.ID != b.ID {
		t.Fatalf("remove: %v %q", err, removed.ID)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "victim"}); ok {
		t.Fatal("a removal the cluster refused is not in force here")
	}
	if want := []string{b.ID + " false", b.ID + " true"}; !slices.Equal(calls, want) {
		t.Fatalf("Replicate calls %q, want %q", calls, want)
	}
}
