package cli

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSecurityMemoryLimitsMosquittoClients: with real Mosquitto clients,
// one identity publishes retained messages past its limit (a review kept
// 400 × 1 MB from one client) and subscribes with a filter over the
// length limit. The v5 publication past the limit fails with Quota
// exceeded, the v3 one is delivered but not retained, and the long
// filter is refused.
func TestSecurityMemoryLimitsMosquittoClients(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
limits:
  max_retained_messages_per_identity: 2
  max_topic_length: 64
acl:
  rules:  # the limits are under test, not the policy
    - {name: all, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#"]}
`)
	port := startMoat(t, dir, "-c", "moat.yaml").port(0)
	base := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}
	pub := func(v, topic string) string {
		out, err := run(t, 10*time.Second, "mosquitto_pub", append(base, "-V", v, "-q", "1", "-r", "-u", "mallory", "-t", topic, "-m", "m-"+topic)...)
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		return out
	}
	for _, topic := range []string{"r/1", "r/2"} {
		if out := pub("mqttv5", topic); strings.Contains(out, "failed") {
			t.Fatalf("publish %s: %s", topic, out)
		}
	}
	if out := pub("mqttv5", "r/3"); !strings.Contains(out, "Quota exceeded") {
		t.Fatalf("third retained message of one identity: %q, want Quota exceeded", out)
	}
	pub("mqttv311", "r/4")
	out, _ := run(t, 10*time.Second, "mosquitto_sub", append(base, "-V", "mqttv5", "-t", "r/#", "--retained-only", "-W", "2", "-v")...)
	if !strings.Contains(out, "r/1 m-r/1") || !strings.Contains(out, "r/2 m-r/2") || strings.Contains(out, "r/3") || strings.Contains(out, "r/4") {
		t.Fatalf("retained messages: %q", out)
	}
	long := "a/" + strings.Repeat("x", 100)
	for _, v := range []string{"mqttv311", "mqttv5"} {
		out, _ := run(t, 10*time.Second, "mosquitto_sub", append(base, "-V", v, "-t", long, "-W", "5")...)
		if !strings.Contains(out, "All subscription requests were denied") {
			t.Fatalf("%s subscription to a 102-byte filter: %q", v, out)
		}
	}
}

// A mosquitto.conf keeps Mosquitto's meaning, but where Mosquitto has no
// limit Moat's safe defaults apply, and the log says so once at start.
func TestServeMosquittoConfSafeDefaults(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", ports[0]))
		return []string{"-c", "mosquitto.conf"}
	})
	logs := p.logs.String()
	if n := strings.Count(logs, "safe defaults apply"); n != 1 {
		t.Fatalf("%d safe-defaults lines in:\n%s", n, logs)
	}
	for _, s := range []string{"max_packet_size=1MiB", "max_preauth_packet_size=64KiB", "max_retained_bytes=256MiB", "read_budget=64MiB"} {
		if !strings.Contains(logs, s) {
			t.Errorf("log lacks %q:\n%s", s, logs)
		}
	}
}
