package cli

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

var banIDRe = regexp.MustCompile(`ban ([0-9a-f]{16}) added`)

// banCmd runs `moat ban ARGS --data data` and returns the new ban's ID
// for add.
func banCmd(t *testing.T, data string, args ...string) (id, out, errOut string) {
	t.Helper()
	code, out, errOut := runMoat(append(append([]string{"ban"}, args...), "--data", data)...)
	if code != 0 {
		t.Fatalf("moat ban %v: exit %d\n%s%s", args, code, out, errOut)
	}
	if m := banIDRe.FindStringSubmatch(out); m != nil {
		id = m[1]
	}
	return id, out, errOut
}

// TestBansKeptInStore: with the durable store on, the ban list lives in
// it. A bans.json left from a start without the store is imported once
// (renamed, not deleted, and audited); `moat ban` changes the list of the
// running broker through its control socket, at once (the live client a
// new ban matches is disconnected before the command returns, with no
// poll); with the broker stopped, `moat ban` edits the store itself; the
// next start enforces what was stored.
func TestBansKeptInStore(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	// No store yet: moat ban writes the bans file.
	fileBan, _, errOut := banCmd(t, data, "add", "--ip", "127.0.0.61", "--reason", "from the file")
	if !strings.Contains(errOut, guard.BansFileName) {
		t.Errorf("moat ban add without a broker or store said %q; want the bans file named", errOut)
	}
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "moat.yaml"), fmt.Sprintf("listeners:\n  - address: 127.0.0.1:%d\n    transport: tcp\n    allow_anonymous: true\ndata_dir: data\n", ports[0]))
		return []string{"-c", "moat.yaml"}
	})
	b := &defBroker{addr: p.addr(0)}

	// Imported: the file renamed, its ban in force.
	if _, err := os.Stat(filepath.Join(data, guard.BansFileName)); !os.IsNotExist(err) {
		t.Errorf("bans.json still there after the import (%v)", err)
	}
	if m, _ := filepath.Glob(filepath.Join(data, guard.BansFileName+".imported-*")); len(m) != 1 {
		t.Errorf("imported file: %v, want one bans.json.imported-TIME", m)
	}
	if !closedAtAccept(t, b, "127.0.0.61") {
		t.Error("the imported address ban is not in force")
	}

	// Running: moat ban goes through the control socket, at once.
	victim := connectFrom(t, b, "127.0.0.62", "victim", "", "")
	other := connectFrom(t, b, "127.0.0.63", "other", "", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var subOut bytes.Buffer
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-A", "127.0.0.64", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port(0)),
		"-V", "5", "-i", "sub-victim", "-t", "x")
	sub.Stdout, sub.Stderr = &subOut, &subOut
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Wait() }()
	testutil.WaitFor(t, "mosquitto_sub connected", 10*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "sub-victim")
	})
	victimID, _, errOut := banCmd(t, data, "add", "--client-id", "victim", "--reason", "operator")
	if !strings.Contains(errOut, "running broker") {
		t.Errorf("moat ban add with the broker running said %q", errOut)
	}
	// Nothing polls: the DISCONNECT is already on its way.
	if code := victim.readDisconnect(t); code != packet.AdministrativeAction {
		t.Fatalf("victim disconnected with %v, want 0x98", code)
	}
	banCmd(t, data, "add", "--client-id", "sub-victim")
	select {
	case <-subDone:
	case <-time.After(15 * time.Second):
		t.Fatalf("mosquitto_sub still runs after its client ID was banned:\n%s", subOut.String())
	}
	other.roundTrip(t)
	_, out, _ := banCmd(t, data, "list")
	for _, want := range []string{"127.0.0.61/32", "victim", "sub-victim"} {
		if !strings.Contains(out, want) {
			t.Errorf("list of the running broker lacks %s:\n%s", want, out)
		}
	}

	// Stopped: moat ban edits the store.
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	_, out, _ = banCmd(t, data, "list")
	if !strings.Contains(out, victimID) || !strings.Contains(out, "127.0.0.61/32") {
		t.Errorf("list of the stopped broker's store:\n%s", out)
	}
	_, _, errOut = banCmd(t, data, "add", "--username", "eve")
	if !strings.Contains(errOut, "durable store") {
		t.Errorf("moat ban add with the broker stopped said %q; want the durable store named", errOut)
	}
	banCmd(t, data, "remove", fileBan)
	if _, err := os.Stat(filepath.Join(data, guard.BansFileName)); !os.IsNotExist(err) {
		t.Error("moat ban wrote a bans file beside the store")
	}
	code, out, errOut := runMoat("store", "verify", "--data", filepath.Join(data, "store"))
	if code != 0 || !regexp.MustCompile(`bans\s+3`).MatchString(out) {
		t.Errorf("moat store verify: exit %d\n%s%s", code, out, errOut)
	}

	// The next start enforces the store's list.
	q := p.restart(t)
	c, err := dialFrom(t, "127.0.0.65", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := c.connect(t, "e1", "eve", ""); err != nil || ack.ReasonCode != packet.Banned {
		t.Errorf("eve after the restart: %v %v, want CONNACK Banned", ack, err)
	}
	c.nc.Close()
	connectFrom(t, b, "127.0.0.61", "back", "", "").roundTrip(t)
	q.cmd.Process.Signal(syscall.SIGTERM)
	<-q.done

	path := filepath.Join(data, audit.DefaultFile)
	n := auditTypes(t, path)
	if n[audit.TypeBanImport] != 1 || n[audit.TypeAdminAction] < 2 || n[audit.TypeBanLoad] < 3 {
		t.Errorf("audit entries %v; want a ban.import, the control socket's admin.action entries, the bans loaded at each start", n)
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
}

// TestBanWithoutBrokerOrStore: with no broker and no store, moat ban keeps
// working on the bans file (persistence off), and a socket left by a
// broker that was killed is taken for no broker.
func TestBanWithoutBrokerOrStore(t *testing.T) {
	data := t.TempDir()
	stale := filepath.Join(data, guard.ControlSocketName)
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as a killed broker leaves it
	ln.Close()
	id, _, _ := banCmd(t, data, "add", "--username", "mallory")
	if bans, err := (guard.File{Path: filepath.Join(data, guard.BansFileName)}).Read(); err != nil || len(bans) != 1 || bans[0].ID != id {
		t.Fatalf("bans file: %+v %v", bans, err)
	}
	banCmd(t, data, "remove", id)
	if code, _, errOut := runMoat("ban", "list", "--data", data, "--store", filepath.Join(data, "nothing")); code == 0 ||
		!strings.Contains(errOut, "no durable store") {
		t.Errorf("--store naming no store: exit %d %q", code, errOut)
	}
}

// TestSecurityLimitAbuseBans: a client on 127.0.0.50 keeps publishing to
// topics over max_topic_length with mosquitto_pub, a new client ID each
// time (each is disconnected with 0x90). The limit_abuse detector,
// configured to ban at 5 hits, counts them on the address and bans it;
// the next connection from it is closed at accept, while a client on
// 127.0.0.51 keeps working. Every hit is counted ($SYS limits/…), and the
// hits and the detection are in the audit log.
func TestSecurityLimitAbuseBans(t *testing.T) {
	needTool(t, "mosquitto_pub")
	b := startDefended(t, defYAML+"limits: {max_topic_length: 32}\ndefense: {limit_abuse: {threshold: 5, action: ban}}\n", anonymousOnly(), nil)
	good := connectFrom(t, b, "127.0.0.51", "good", "", "")
	host, port, err := net.SplitHostPort(b.addr)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		out, err := run(t, 10*time.Second, "mosquitto_pub", "-A", "127.0.0.50", "-h", host, "-p", port, "-V", "5",
			"-i", fmt.Sprint("prober-", i), "-t", strings.Repeat("t", 40), "-m", "x")
		t.Logf("mosquitto_pub %d: %v %s", i, err, out)
	}
	// mosquitto_pub does not wait for the broker to read its PUBLISH.
	testutil.CheckFor(t, 10*time.Second, func() error {
		cs := b.plan.defense.Counters()
		if cs["limits/topic_length"] != 5 || cs["detections/limit_abuse"] != 1 || cs["bans/automatic"] < 1 {
			return fmt.Errorf("counters: limits/topic_length %d, detections/limit_abuse %d, bans/automatic %d", cs["limits/topic_length"],
				cs["detections/limit_abuse"], cs["bans/automatic"])
		}
		return nil
	})
	if !closedAtAccept(t, b, "127.0.0.50") {
		t.Fatal("the address that kept hitting the topic length limit is not banned")
	}
	good.roundTrip(t)
	b.stop()
	data, err := os.ReadFile(filepath.Join(b.dir, audit.DefaultFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"detector":"limit_abuse"`, `"limit":"topic_length"`, `"source":"limit_abuse"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

// TestSecurityLimitAbuseRatePauses: a client that goes over its message
// rate again and again is a limit abuser too: each time it goes over (not
// each paused packet) counts, and with the detector set to disconnect it
// is ended while the reading pauses.
func TestSecurityLimitAbuseRatePauses(t *testing.T) {
	b := startDefended(t, defYAML+"defense: {message_rate: 50, message_burst: 5, limit_abuse: {threshold: 3, action: disconnect}}\n", anonymousOnly(), nil)
	c := connectFrom(t, b, "127.0.0.52", "bursty", "", "")
	burst := func() error {
		var buf []byte
		for i := range 10 {
			buf, _ = packet.Append(buf, &packet.Publish{Topic: "t/x", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("x")}, packet.V5)
		}
		if _, err := c.nc.Write(buf); err != nil {
			return err
		}
		for range 10 {
			p, err := c.r.ReadPacket()
			if err != nil {
				return err
			}
			if d, ok := p.(*packet.Disconnect); ok {
				return fmt.Errorf("DISCONNECT %v", d.ReasonCode)
			}
		}
		return nil
	}
	var err error
	for i := 0; i < 5 && err == nil; i++ {
		err = burst()
		// Back under its rate (on the guard's clock) before the next
		// burst: the next one is a new time over it.
		b.clock.advance(time.Second)
	}
	if err == nil {
		t.Fatal("the client that kept going over its rate was not disconnected")
	}
	t.Logf("ended: %v", err)
	if cs := b.plan.defense.Counters(); cs["limits/rate"] != 3 || cs["detections/limit_abuse"] != 1 {
		t.Errorf("limits/rate %d, want one per burst (3); detections/limit_abuse %d, want 1", cs["limits/rate"], cs["detections/limit_abuse"])
	}
}

// TestLimitAbuseDefaultsInMosquittoConf: an unchanged mosquitto.conf
// gets the limit_abuse detector with its defaults (20 hits within a
// minute, on every identity, logged), like the other detectors.
func TestLimitAbuseDefaultsInMosquittoConf(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse(filepath.Join(dir, "mosquitto.conf"), []byte("listener 1883 127.0.0.1\nallow_anonymous true\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(dir, "data")
	p := &servePlan{cfg: cfg, log: slog.New(slog.DiscardHandler), guardTick: make(chan time.Time)}
	p.planBroker()
	p.planDefense()
	defer p.close()
	if len(p.errs) > 0 {
		t.Fatal(p.err())
	}
	got := p.defense.guard().Detectors().LimitAbuse
	if got.Threshold != 20 || got.Window != time.Minute || got.Action != guard.ActionLog || got.Keys != guard.KeysAll || got.Disabled {
		t.Errorf("limit_abuse in mosquitto.conf mode: %+v", got)
	}
	if _, ok := p.broker.Observer.(*defense); !ok {
		t.Fatal("defense is not the broker's Observer")
	}
	var _ broker.LimitObserver = &connDefense{}
}

// TestWebSocketTLSFailuresCounted: handshakes a secure WebSocket
// listener refuses (plain HTTP with curl, a client without the required
// certificate with openssl s_client) are in
// moat_tls_handshake_failures_total by reason, as the TLS listener's are.
func TestWebSocketTLSFailuresCounted(t *testing.T) {
	t.Parallel()
	needTool(t, "curl", "openssl")
	e := startAdminEnvConfig(t, `listeners:
  - name: wss
    address: 127.0.0.1:0
    transport: wss
    tls:
      client_auth: required
data_dir: data
admin:
  listen: 127.0.0.1:0
`)
	addr := fmt.Sprintf("127.0.0.1:%d", e.mqtt)
	run(t, 10*time.Second, "curl", "-sS", "--max-time", "5", "http://"+addr+"/mqtt")
	cmd := exec.Command("openssl", "s_client", "-connect", addr, "-CAfile", filepath.Join(e.data, "ca", "ca.pem"), "-servername", "localhost")
	cmd.Stdin = strings.NewReader("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
	out, _ := cmd.CombinedOutput()
	t.Logf("openssl s_client without a certificate:\n%s", out)
	testutil.WaitFor(t, "the refused handshakes in the metrics", 10*time.Second, func() bool {
		_, body := e.connectionsMetric(t)
		return metricValue(body, `moat_tls_handshake_failures_total{reason="not_tls"}`) == 1 &&
			metricValue(body, `moat_tls_handshake_failures_total{reason="certificate_missing"}`) == 1
	})
}

// TestAdminBanHonoursMaxBans: a ban added through the admin API goes to
// the guard, which refuses it past defense.max_bans (409), as it refuses
// any other; one within the limit is in force when the API answers.
func TestAdminBanHonoursMaxBans(t *testing.T) {
	t.Parallel()
	e := startAdminEnv(t, "defense:\n  max_bans: 1\n")
	code, body := e.call(t, "POST", "/api/v1/bans", e.operator, map[string]string{"kind": "client_id", "value": "one"})
	if code != 201 {
		t.Fatalf("first ban: %d %s", code, body)
	}
	code, body = e.call(t, "POST", "/api/v1/bans", e.operator, map[string]string{"kind": "client_id", "value": "two"})
	if code != 409 || !strings.Contains(string(body), "max_bans") {
		t.Fatalf("second ban past max_bans 1: %d %s; want 409", code, body)
	}
	code, body = e.call(t, "GET", "/api/v1/bans", e.viewer, nil)
	if code != 200 || !strings.Contains(string(body), `"one"`) || strings.Contains(string(body), `"two"`) {
		t.Errorf("ban list: %d %s", code, body)
	}
}
