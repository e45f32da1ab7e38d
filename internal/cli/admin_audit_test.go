package cli

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/testutil"
)

// TestAdminChangesAudited: every kind of change through the admin API of
// a real `moat serve` (kick, ban added and removed, retained message
// deleted, certificate revoked, reload) and a viewer's refused attempt
// leave an admin.action entry in audit.log with the token's name, the
// target and the result; the log's chain verifies.
func TestAdminChangesAudited(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub", "mosquitto_pub")
	e := startAdminEnv(t)
	serial, _, _ := e.device(t, "sensor-a")
	testutil.WaitFor(t, "the device to connect", 10*time.Second, func() bool { return len(e.clients(t).Clients) == 1 })
	// A retained message from the device, in its own tree.
	out, err := run(t, 15*time.Second, "mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(e.mqtt), "-V", "5",
		"--cafile", filepath.Join(e.data, "ca", "ca.pem"), "--cert", filepath.Join(e.dir, "sensor-a.pem"),
		"--key", filepath.Join(e.dir, "sensor-a.key"), "-i", "sensor-a-pub", "-t", "devices/sensor-a/state", "-m", "on", "-r", "-q", "1")
	if err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	testutil.WaitFor(t, "the retained message", 10*time.Second, func() bool {
		_, b := e.call(t, "GET", "/api/v1/retained?filter=devices/%23", e.viewer, nil)
		return strings.Contains(string(b), "devices/sensor-a/state")
	})

	mustCall := func(method, path string, body any, want int) []byte {
		t.Helper()
		code, b := e.call(t, method, path, e.operator, body)
		if code != want {
			t.Fatalf("%s %s: %d %s; want %d", method, path, code, b, want)
		}
		return b
	}
	mustCall("POST", "/api/v1/clients/sensor-a/kick", map[string]string{"reason": "audit test"}, 200)
	var ban struct{ ID string }
	json.Unmarshal(mustCall("POST", "/api/v1/bans", map[string]string{"kind": "client_id", "value": "intruder", "reason": "audit test"}, 201), &ban)
	mustCall("DELETE", "/api/v1/bans/"+ban.ID, nil, 200)
	mustCall("DELETE", "/api/v1/retained?topic=devices/sensor-a/state", nil, 200)
	mustCall("POST", "/api/v1/certificates/"+serial+"/revoke", map[string]string{"reason": "keyCompromise"}, 200)
	mustCall("POST", "/api/v1/config/reload", nil, 200)
	if code, b := e.call(t, "POST", "/api/v1/config/reload", e.viewer, nil); code != 403 {
		t.Fatalf("viewer reload: %d %s", code, b)
	}
	e.proc.cmd.Process.Signal(syscall.SIGTERM)
	<-e.proc.done

	path := filepath.Join(e.data, audit.DefaultFile)
	type key struct{ token, action, target, result string }
	got := map[key]bool{}
	for _, en := range auditEntries(t, path) {
		if en.Type != audit.TypeAdminAction {
			continue
		}
		s := func(k string) string { v, _ := field(en, k).(string); return v }
		if !strings.HasPrefix(s("remote"), "127.0.0.1:") {
			t.Errorf("admin.action remote %q", s("remote"))
		}
		got[key{s("token"), s("action"), s("target"), s("result")}] = true
	}
	for _, w := range []key{
		{"ci-operator", "kick", "sensor-a", "ok"},
		{"ci-operator", "ban.add", "client_id intruder", "ok"},
		{"ci-operator", "ban.remove", ban.ID, "ok"},
		{"ci-operator", "retained.delete", "devices/sensor-a/state", "ok"},
		{"ci-operator", "cert.revoke", serial, "ok"},
		{"ci-operator", "reload", "configuration", "ok"},
		{"ci-viewer", "reload", "/api/v1/config/reload", "refused: the viewer role makes no changes"},
	} {
		if !got[w] {
			t.Errorf("no admin.action entry %+v; have %v", w, got)
		}
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
}
