package cli

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// metricValue returns the value of the series name{labels} (labels in
// the exposition's order, "" for none) in a scrape, or -1 when absent.
func metricValue(body []byte, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		return -1
	}
	return v
}

// TestMetricsEndToEnd drives a real `moat serve` with real clients and
// checks what /metrics reports: messages by QoS, authentication and
// authorization results, TLS handshakes by version and group and
// failures by reason, store commit latency; promtool lints the scrape.
func TestMetricsEndToEnd(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub", "mosquitto_pub", "promtool")
	e := startAdminEnvWith(t, `acl:
  rules:
    - {name: own-tree, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["devices/%{cn}/#"]}
`)
	e.device(t, "sensor-7")
	testutil.WaitFor(t, "the subscriber", 10*time.Second, func() bool { return len(e.clients(t).Clients) == 1 })

	ca := filepath.Join(e.data, "ca", "ca.pem")
	pub := func(args ...string) error {
		base := []string{"pub", "-h", "127.0.0.1", "-p", strconv.Itoa(e.mqtt), "--cafile", ca,
			"--cert", filepath.Join(e.dir, "sensor-7.pem"), "--key", filepath.Join(e.dir, "sensor-7.key"), "-i", "sensor-7-pub"}
		cmd := exec.Command(moatBin, append(base, args...)...)
		cmd.Dir = e.dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	// moat pub is a Go client: TLS 1.3 with X25519MLKEM768.
	if err := pub("-t", "devices/sensor-7/temp", "-q", "1", "-r", "-m", "21.5"); err != nil {
		t.Fatal(err)
	}
	// The default policy confines a device to its own topics.
	if err := pub("-t", "devices/sensor-8/temp", "-q", "1", "-m", "x"); err == nil {
		t.Log("publish to another device's topic: acknowledged with a refusal code")
	}
	// A client without a certificate, and plain MQTT to the TLS port.
	exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(e.mqtt), "--cafile", ca,
		"-t", "x", "-m", "x").Run()
	nc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(e.mqtt))
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 4, 't', 'e', 's', 't'})
	nc.Close()

	var body []byte
	testutil.WaitFor(t, "the counters", 10*time.Second, func() bool {
		_, body = e.connectionsMetric(t)
		return metricValue(body, `moat_tls_handshake_failures_total{reason="not_tls"}`) == 1 &&
			metricValue(body, `moat_tls_handshake_failures_total{reason="certificate_missing"}`) == 1 &&
			metricValue(body, `moat_messages_sent_total{qos="0"}`) == 1
	})
	sum := func(series ...string) float64 {
		var n float64
		for _, s := range series {
			if v := metricValue(body, s); v > 0 {
				n += v
			}
		}
		return n
	}
	for _, c := range []struct {
		what string
		got  float64
		want float64
	}{
		// Two PUBLISH at QoS 1 of 4 and 1 payload bytes (the second
		// refused), one delivered to the QoS 0 subscriber.
		{"QoS 1 messages received", metricValue(body, `moat_messages_received_total{qos="1"}`), 2},
		{"QoS 0 messages received", metricValue(body, `moat_messages_received_total{qos="0"}`), 0},
		{"QoS 1 payload bytes received", metricValue(body, `moat_payload_received_bytes_total{qos="1"}`), 5},
		{"QoS 0 messages sent", metricValue(body, `moat_messages_sent_total{qos="0"}`), 1},
		// The subscriber and the two publishers, by certificate.
		{"successful authentications", metricValue(body, `moat_authentications_total{reason="credentials",result="success"}`), 3},
		{"publishes refused by the policy", sum(`moat_authorization_denials_total{reason="default",request="publish"}`,
			`moat_authorization_denials_total{reason="rule",request="publish"}`), 1},
		{"publish decisions allowed", metricValue(body, `moat_authorization_decisions_total{action="publish",result="allowed"}`), 1},
		{"publish decisions denied", metricValue(body, `moat_authorization_decisions_total{action="publish",result="denied"}`), 1},
		{"subscribe decisions allowed", metricValue(body, `moat_authorization_decisions_total{action="subscribe",result="allowed"}`), 1},
		{"receive decisions allowed", metricValue(body, `moat_authorization_decisions_total{action="receive",result="allowed"}`), 1},
		// The Go client negotiates the post-quantum hybrid; mosquitto_sub
		// whatever its OpenSSL offers.
		{"post-quantum handshakes", metricValue(body, `moat_tls_handshakes_total{group="X25519MLKEM768",version="TLS 1.3"}`), 2},
		{"all handshakes", sum(`moat_tls_handshakes_total{group="X25519MLKEM768",version="TLS 1.3"}`,
			`moat_tls_handshakes_total{group="X25519",version="TLS 1.3"}`, `moat_tls_handshakes_total{group="CurveP256",version="TLS 1.3"}`), 3},
		{"handshakes without a client certificate", metricValue(body, `moat_tls_handshake_failures_total{reason="certificate_missing"}`), 1},
		{"plain MQTT to the TLS port", metricValue(body, `moat_tls_handshake_failures_total{reason="not_tls"}`), 1},
		{"live connections", metricValue(body, `moat_connections`), 1},
		{"retained messages ($SYS included)", min(metricValue(body, `moat_retained_messages`), 2), 2},
		{"store transactions timed", metricValue(body, `moat_store_commit_duration_seconds_count`), metricValue(body, `moat_store_transactions_total`)},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if n := metricValue(body, "moat_store_transactions_total"); n < 1 {
		t.Errorf("moat_store_transactions_total = %v; the retained message was stored", n)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if t.Failed() {
		var lines []string
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "moat_") {
				lines = append(lines, l)
			}
		}
		t.Logf("scrape:\n%s", strings.Join(lines, "\n"))
	}
}
