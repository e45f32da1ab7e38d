package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// auditEntries reads the run's audit log.
func auditEntries(t *testing.T, path string) []*audit.Entry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Entry
	for line := range strings.Lines(string(data)) {
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// field returns an entry's field as a string ("" when absent) or an int
// as its decimal form.
func field(e *audit.Entry, key string) any {
	f, ok := e.Get(key)
	if !ok {
		return nil
	}
	return f.Value()
}

// readDisconnectPacket reads until the broker's DISCONNECT.
func (c *mqttClient) readDisconnectPacket(t *testing.T) *packet.Disconnect {
	t.Helper()
	for {
		p, err := c.r.ReadPacket()
		if err != nil {
			t.Fatalf("no DISCONNECT: %v", err)
		}
		if d, ok := p.(*packet.Disconnect); ok {
			return d
		}
	}
}

// TestSecurityBanTakesLossOfAccessPath: a ban added while the banned
// identity is connected ends its live session through the same path as
// every other loss of access (broker.Reevaluate): the client gets
// DISCONNECT 0x98 with the ban as the reason, the loss-of-access counter
// moves, and the audit log records the client as access.lost (trigger
// "ban", with its identity and the reason) before the ban.add that counts
// it. A client the ban does not match stays.
func TestSecurityBanTakesLossOfAccessPath(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(_ context.Context, r *broker.ConnectRequest) broker.AuthResult {
		// Every claimed username is taken as verified here: the test is
		// about what happens once a verified identity is banned.
		return broker.AuthResult{Allow: true, Username: r.Connect.Username}
	}), nil)
	victim := connectFrom(t, b, "127.0.0.21", "victim", "mallory", "pw")
	other := connectFrom(t, b, "127.0.0.22", "other", "alice", "pw")
	if code, out, errOut := runMoat("ban", "add", "--username", "mallory", "--reason", "stolen credentials", "--data", b.dir); code != 0 {
		t.Fatalf("moat ban add: %d %s %s", code, out, errOut)
	}
	b.poll()
	d := victim.readDisconnectPacket(t)
	if d.ReasonCode != packet.AdministrativeAction || !strings.Contains(d.Properties.ReasonString, "stolen credentials") {
		t.Fatalf("victim got DISCONNECT %v %q, want 0x98 with the ban's reason", d.ReasonCode, d.Properties.ReasonString)
	}
	other.roundTrip(t)
	if n := b.srv.Stats().RevokedDisconnects; n != 1 {
		t.Errorf("loss-of-access disconnects = %d, want 1", n)
	}
	b.stop()

	entries := auditEntries(t, filepath.Join(b.dir, "audit.log"))
	lost, added := -1, -1
	for i, e := range entries {
		switch e.Type {
		case audit.TypeAccessLost:
			if lost >= 0 {
				t.Errorf("two access.lost entries; only mallory lost access")
			}
			lost = i
			for k, want := range map[string]any{"trigger": "ban", "client_id": "victim", "username": "mallory",
				"listener": "test", "disconnected": int64(1)} {
				if got := field(e, k); got != want {
					t.Errorf("access.lost %s = %v, want %v", k, got, want)
				}
			}
			if r, _ := field(e, "reason").(string); !strings.Contains(r, "stolen credentials") {
				t.Errorf("access.lost reason %q", r)
			}
			if a, _ := field(e, "addr").(string); !strings.HasPrefix(a, "127.0.0.21:") {
				t.Errorf("access.lost addr %q", a)
			}
		case audit.TypeBanAdd:
			added = i
			if got := field(e, "disconnected"); got != int64(1) {
				t.Errorf("ban.add disconnected = %v, want 1", got)
			}
		}
	}
	if lost < 0 || added < 0 || lost > added {
		t.Fatalf("access.lost at %d, ban.add at %d: want both, the client first", lost, added)
	}
}
