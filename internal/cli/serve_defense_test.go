package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/bench"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// defYAML is the configuration of the defense tests: the defaults.
const defYAML = "listeners:\n  - address: 127.0.0.1:0\n    transport: tcp\n    allow_anonymous: true\n"

// defClock is the guard's injected clock.
type defClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *defClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *defClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// defBroker is a broker wired as moat serve wires it (planDefense), with an
// Authenticator and an Authorizer of the test's own, serving a plain TCP
// listener on 127.0.0.1.
type defBroker struct {
	addr  string
	dir   string
	srv   *broker.Server
	plan  *servePlan
	clock *defClock
	tick  chan time.Time
	stop  func() // shuts the broker down and closes the plan (audit log)
}

func startDefended(t *testing.T, yaml string, auth broker.Authenticator, authz broker.Authorizer) *defBroker {
	t.Helper()
	return startDefendedClock(t, yaml, auth, authz, false)
}

// startDefendedClock starts the broker with the guard on the system clock
// when realClock is set (rate limits measured in real time), else on the
// injected one, which the broker's own time (silence) follows too.
func startDefendedClock(t *testing.T, yaml string, auth broker.Authenticator, authz broker.Authorizer, realClock bool) *defBroker {
	t.Helper()
	return startDefendedIn(t, t.TempDir(), yaml, auth, authz, realClock)
}

// startDefendedIn is startDefendedClock with dir as the data directory.
func startDefendedIn(t *testing.T, dir, yaml string, auth broker.Authenticator, authz broker.Authorizer, realClock bool) *defBroker {
	t.Helper()
	cfg, err := config.Parse("moat.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = dir
	clock := &defClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	tick := make(chan time.Time)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	p := &servePlan{cfg: cfg, log: log, guardNow: clock.now, guardTick: tick}
	if realClock {
		p.guardNow = nil
	}
	p.planBroker()
	if !realClock {
		p.broker.Now = clock.now
	}
	p.planDefense()
	if len(p.errs) > 0 {
		p.close()
		t.Fatal(p.err())
	}
	p.broker.Authenticator = auth
	p.broker.Authorizer = authz
	p.broker.SysInterval = -1
	p.startBroker()
	if len(p.errs) > 0 {
		p.close()
		t.Fatal(p.err())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.close()
		t.Fatal(err)
	}
	anon := true
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.srv.Serve(ctx, ln, broker.ListenerConfig{Name: "test", AllowAnonymous: &anon}) })
	var once sync.Once
	b := &defBroker{addr: ln.Addr().String(), dir: dir, srv: p.srv, plan: p, clock: clock, tick: tick}
	b.stop = func() {
		once.Do(func() {
			cancel()
			p.shutdown()
			wg.Wait()
			p.close()
		})
	}
	t.Cleanup(b.stop)
	return b
}

// poll runs one round of the guard's watcher (bans file, expiry).
func (b *defBroker) poll() { b.tick <- b.clock.now() }

// mqttClient is a raw MQTT 5 client dialled from a chosen loopback
// source address.
type mqttClient struct {
	nc net.Conn
	r  *packet.Reader
}

func dialFrom(t *testing.T, src, addr string) (*mqttClient, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := packet.NewReader(bufio.NewReader(nc), 1<<20)
	r.SetVersion(packet.V5)
	return &mqttClient{nc: nc, r: r}, nil
}

func (c *mqttClient) send(t *testing.T, p packet.Packet) error {
	t.Helper()
	b, err := packet.Append(nil, p, packet.V5)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.nc.Write(b)
	return err
}

// connect sends CONNECT and returns CONNACK, or the error of a socket the
// broker closed without answering.
func (c *mqttClient) connect(t *testing.T, clientID, user, pass string) (*packet.Connack, error) {
	t.Helper()
	cp := &packet.Connect{Version: packet.V5, ClientID: clientID, CleanStart: true, KeepAlive: 60}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
	}
	if pass != "" {
		cp.Password, cp.PasswordFlag = []byte(pass), true
	}
	if err := c.send(t, cp); err != nil {
		return nil, err
	}
	p, err := c.r.ReadPacket()
	if err != nil {
		return nil, err
	}
	ack, ok := p.(*packet.Connack)
	if !ok {
		t.Fatalf("got %s, want CONNACK", p.Type())
	}
	return ack, nil
}

// connectFrom dials from src and connects; it fails the test unless the
// broker accepts.
func connectFrom(t *testing.T, b *defBroker, src, clientID, user, pass string) *mqttClient {
	t.Helper()
	c, err := dialFrom(t, src, b.addr)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.connect(t, clientID, user, pass)
	if err != nil {
		t.Fatalf("%s from %s: %v", clientID, src, err)
	}
	if ack.ReasonCode != packet.Success {
		t.Fatalf("%s from %s: CONNACK %v", clientID, src, ack.ReasonCode)
	}
	t.Cleanup(func() { c.nc.Close() })
	return c
}

// closedAtAccept reports whether a connection from src is closed by the
// broker without any answer to CONNECT.
func closedAtAccept(t *testing.T, b *defBroker, src string) bool {
	t.Helper()
	c, err := dialFrom(t, src, b.addr)
	if err != nil {
		return true
	}
	defer c.nc.Close()
	_, err = c.connect(t, "probe", "", "")
	return err != nil
}

// roundTrip checks that c still works: PINGREQ answered.
func (c *mqttClient) roundTrip(t *testing.T) {
	t.Helper()
	if err := c.send(t, &packet.Pingreq{}); err != nil {
		t.Fatalf("well-behaved client: %v", err)
	}
	p, err := c.r.ReadPacket()
	if err != nil {
		t.Fatalf("well-behaved client: %v", err)
	}
	if p.Type() != packet.PINGRESP {
		t.Fatalf("well-behaved client got %s", p.Type())
	}
}

// readDisconnect reads until the broker's DISCONNECT and returns its code,
// or 0 when the socket just closed.
func (c *mqttClient) readDisconnect(t *testing.T) packet.ReasonCode {
	t.Helper()
	for {
		p, err := c.r.ReadPacket()
		if err != nil {
			t.Logf("read: %v", err)
			return 0
		}
		if d, ok := p.(*packet.Disconnect); ok {
			return d.ReasonCode
		}
	}
}

// auditTypes counts the entry types of the run's audit log.
func auditTypes(t *testing.T, path string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for line := range strings.Lines(string(data)) {
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		n[e.Type]++
	}
	return n
}

// TestSecurityConnectionFloodCutAtAccept: an attacker opens connections
// from 127.0.0.2 as fast as it can (the attack). Beyond the per-address
// burst (100) the broker closes each socket at accept, before reading a
// byte, while a client on 127.0.0.3 connects and keeps working.
func TestSecurityConnectionFloodCutAtAccept(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	}), nil)
	good := connectFrom(t, b, "127.0.0.3", "good", "", "")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	refused := 0
	for range 300 {
		c, err := dialFrom(t, "127.0.0.2", b.addr)
		if err != nil {
			refused++
			continue
		}
		conns = append(conns, c.nc)
	}
	// The refused sockets were closed by the broker: a read sees EOF; the
	// admitted ones wait for CONNECT and time out here.
	deadline := time.Now().Add(time.Second)
	var closed atomic.Int64
	var wg sync.WaitGroup
	for _, nc := range conns {
		wg.Go(func() {
			nc.SetReadDeadline(deadline)
			var one [1]byte
			if _, err := nc.Read(one[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	refused += int(closed.Load())
	if refused < 190 || refused > 200 {
		t.Errorf("%d of 300 flood connections refused at accept, want 200 (burst 100)", refused)
	}
	if st := b.srv.Stats(); st.AcceptRefused < 190 {
		t.Errorf("broker counted %d refusals at accept", st.AcceptRefused)
	}
	good.roundTrip(t)
	connectFrom(t, b, "127.0.0.3", "good-2", "", "").roundTrip(t)
}

// TestSecurityPasswordGuessingBansAddress: a client on 127.0.0.4 guesses
// alice's password 10 times within a minute (the attack). The address and
// the username are banned for 5 minutes: the next connection from the
// address is closed at accept, alice cannot log in from elsewhere, and a
// client on 127.0.0.5 is unaffected. The ban is in bans.json, it expires on
// the injected clock, and every step is in the audit log, which verifies.
func TestSecurityPasswordGuessingBansAddress(t *testing.T) {
	auth := broker.AuthenticatorFunc(func(_ context.Context, req *broker.ConnectRequest) broker.AuthResult {
		if string(req.Connect.Password) == "right-"+req.Connect.Username {
			return broker.AuthResult{Allow: true, Reason: "password"}
		}
		return broker.AuthResult{Code: packet.BadUsernameOrPassword, Reason: "bad password"}
	})
	b := startDefended(t, defYAML, auth, nil)
	good := connectFrom(t, b, "127.0.0.5", "good", "bob", "right-bob")
	for i := range 10 {
		c, err := dialFrom(t, "127.0.0.4", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := c.connect(t, fmt.Sprintf("guess-%d", i), "alice", fmt.Sprintf("guess-%d", i))
		c.nc.Close()
		if err != nil || ack.ReasonCode != packet.BadUsernameOrPassword {
			t.Fatalf("guess %d: %v %v", i, ack, err)
		}
	}
	if !closedAtAccept(t, b, "127.0.0.4") {
		t.Fatal("the guessing address was not banned")
	}
	c, err := dialFrom(t, "127.0.0.6", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := c.connect(t, "alice-elsewhere", "alice", "right-alice"); err != nil || ack.ReasonCode != packet.Banned {
		t.Fatalf("alice from another address: %v %v, want CONNACK 0x8A", ack, err)
	}
	c.nc.Close()
	good.roundTrip(t)
	b.poll() // writes the automatic bans to the file
	b.poll()
	bans, err := os.ReadFile(filepath.Join(b.dir, "bans.json"))
	if err != nil || !strings.Contains(string(bans), "127.0.0.4") || !strings.Contains(string(bans), "alice") {
		t.Fatalf("bans.json: %v\n%s", err, bans)
	}

	// 4 minutes later the ban holds; after 5 it is gone.
	b.clock.advance(4 * time.Minute)
	b.poll()
	if !closedAtAccept(t, b, "127.0.0.4") {
		t.Fatal("ban lifted before 5 minutes")
	}
	b.clock.advance(time.Minute + time.Second)
	b.poll()
	b.poll() // the second tick runs after the first Poll finished
	connectFrom(t, b, "127.0.0.4", "alice", "alice", "right-alice").roundTrip(t)

	b.stop()
	path := filepath.Join(b.dir, audit.DefaultFile)
	n := auditTypes(t, path)
	if n[audit.TypeAuthFailure] != 10 || n[audit.TypeBanAdd] < 2 || n[audit.TypeBanExpire] < 2 || n[audit.TypeDetect] < 1 ||
		n[audit.TypeBanRefuse] < 1 || n[audit.TypeAuthSuccess] < 2 {
		t.Errorf("audit entries: %v", n)
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
}

// TestSecurityTopicScanDisconnectsAndBans: a client on 127.0.0.7 probes
// 20 topics the ACL denies within a minute (the attack). It is disconnected
// with 0x87 Not authorized and its address is banned, while a client on 127.0.0.8
// keeps publishing.
func TestSecurityTopicScanDisconnectsAndBans(t *testing.T) {
	authz := broker.AuthorizerFunc(func(r *broker.AuthzRequest) broker.Decision {
		if strings.HasPrefix(r.Topic, "secret/") {
			return broker.Decision{Reason: "acl: no rule allows this topic"}
		}
		return broker.Decision{Allow: true}
	})
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	}), authz)
	good := connectFrom(t, b, "127.0.0.8", "good", "", "")
	scan := connectFrom(t, b, "127.0.0.7", "scanner", "", "")
	for i := range 20 {
		if err := scan.send(t, &packet.Subscribe{PacketID: uint16(i + 1), Subscriptions: []packet.Subscription{{Filter: fmt.Sprintf("secret/%d", i)}}}); err != nil {
			break // disconnected already
		}
	}
	if code := scan.readDisconnect(t); code != packet.NotAuthorized {
		t.Fatalf("scanner disconnected with %v, want 0x87 Not authorized", code)
	}
	if !closedAtAccept(t, b, "127.0.0.7") {
		t.Fatal("the scanning address was not banned")
	}
	good.roundTrip(t)
	if err := good.send(t, &packet.Publish{Topic: "public/x", QoS: 1, PacketID: 1, Payload: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	if p, err := good.r.ReadPacket(); err != nil || p.Type() != packet.PUBACK {
		t.Fatalf("well-behaved client's publish: %v %v", p, err)
	}
}

// TestBanAddDisconnectsLiveClient: `moat ban add` on the data directory of
// a running broker ends the matching live client with DISCONNECT 0x98
// before it returns (through the broker's control socket: no poll of the
// bans file runs here), and refuses it from then on; other clients stay.
// `moat ban remove` lifts it at once too.
func TestBanAddDisconnectsLiveClient(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	}), nil)
	victim := connectFrom(t, b, "127.0.0.9", "victim", "", "")
	other := connectFrom(t, b, "127.0.0.10", "other", "", "")
	code, out, errOut := runMoat("ban", "add", "--client-id", "victim", "--reason", "test", "--data", b.dir)
	if code != 0 {
		t.Fatalf("moat ban add: %d %s %s", code, out, errOut)
	}
	if code := victim.readDisconnect(t); code != packet.AdministrativeAction {
		t.Fatalf("victim disconnected with %v, want 0x98 Administrative action", code)
	}
	c, err := dialFrom(t, "127.0.0.9", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := c.connect(t, "victim", "", ""); err != nil || ack.ReasonCode != packet.Banned {
		t.Fatalf("banned client ID reconnecting: %v %v", ack, err)
	}
	c.nc.Close()
	other.roundTrip(t)
	id := strings.Fields(out)[1] // "ban ID added: ..."
	if code, out, errOut := runMoat("ban", "remove", id, "--data", b.dir); code != 0 {
		t.Fatalf("moat ban remove %s: %d %s %s", id, code, out, errOut)
	}
	connectFrom(t, b, "127.0.0.9", "victim", "", "").roundTrip(t)
}

// TestSecurityAuditLogOfRunTampered: the audit log of a run verifies after
// a clean stop, and fails after a flipped byte, a removed line, swapped
// lines or a cut tail.
func TestSecurityAuditLogOfRunTampered(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{Code: packet.NotAuthorized, Reason: "nobody"}
	}), nil)
	for i := range 5 {
		c, err := dialFrom(t, "127.0.0.11", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.connect(t, fmt.Sprintf("c%d", i), "u", "p")
		c.nc.Close()
	}
	b.stop()
	path := filepath.Join(b.dir, audit.DefaultFile)
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("verify: %d %s %s", code, out, errOut)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(orig), "\n")
	lines = lines[:len(lines)-1] // the empty string after the last newline
	if len(lines) < 6 {
		t.Fatalf("only %d lines", len(lines))
	}
	flip := []byte(string(orig))
	i := strings.Index(string(flip), `"reason":"nobody"`) + len(`"reason":"`)
	flip[i] ^= 0x20
	swap := append([]string{}, lines...)
	swap[2], swap[3] = swap[3], swap[2]
	for name, data := range map[string]string{
		"flipped byte":  string(flip),
		"removed line":  strings.Join(append(append([]string{}, lines[:2]...), lines[3:]...), ""),
		"swapped lines": strings.Join(swap, ""),
		"cut tail":      strings.Join(lines[:len(lines)-1], ""),
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, _, errOut := runAudit(t, path); code == 0 {
			t.Errorf("%s: verify passed", name)
		} else {
			t.Logf("%s: exit %d: %s", name, code, strings.TrimSpace(errOut))
		}
	}
}

func anonymousOnly() broker.Authenticator {
	return broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	})
}

// TestSecurityRateLimitPausesReading: a client on 127.0.0.12 pipelines 120
// QoS 1 publishes at once against a limit of 200 messages per second with a
// burst of 20 (the attack). The broker stops reading while the client is
// over its rate: the acknowledgements take at least the 0.5 s the rate
// allows, and the client, which never stays over its rate for the
// throttle limit, is not disconnected.
func TestSecurityRateLimitPausesReading(t *testing.T) {
	b := startDefendedClock(t, defYAML+"defense: {message_rate: 200, message_burst: 20}\n", anonymousOnly(), nil, true)
	c := connectFrom(t, b, "127.0.0.12", "fast", "", "")
	var buf []byte
	for i := range 120 {
		var err error
		buf, err = packet.Append(buf, &packet.Publish{Topic: "t/x", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("x")}, packet.V5)
		if err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if _, err := c.nc.Write(buf); err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		p, err := c.r.ReadPacket()
		if err != nil || p.Type() != packet.PUBACK {
			t.Fatalf("ack %d: %v %v", i, p, err)
		}
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("120 messages at 200/s (burst 20) acknowledged in %v, want at least 0.5 s", d)
	}
	c.roundTrip(t)
}

// TestSilentAndFlappingClientsDetected: a client that sends nothing but
// PINGREQ for 10 minutes (on the injected clock), and a client ID that
// connects 10 times within a minute, are detected and recorded in the
// audit log; by default they are only logged, so both keep working.
func TestSilentAndFlappingClientsDetected(t *testing.T) {
	b := startDefended(t, defYAML, anonymousOnly(), nil)
	quiet := connectFrom(t, b, "127.0.0.13", "quiet", "", "")
	quiet.roundTrip(t)
	b.clock.advance(11 * time.Minute)
	quiet.roundTrip(t)
	for range 10 {
		c := connectFrom(t, b, "127.0.0.14", "flapper", "", "")
		c.send(t, &packet.Disconnect{})
		c.nc.Close()
	}
	quiet.roundTrip(t)
	b.stop()
	data, err := os.ReadFile(filepath.Join(b.dir, audit.DefaultFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"detector":"silence"`, `"detector":"flapping"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

// TestSecurityWebSocketFloodCutBeforeUpgrade: `moat serve` with a
// WebSocket listener; 300 connections from 127.0.0.15 each send an HTTP
// upgrade request (the attack). Beyond the per-address burst (100) they are
// closed before the HTTP server reads them; a request from 127.0.0.16 is
// still answered.
func TestSecurityWebSocketFloodCutBeforeUpgrade(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - address: 127.0.0.1:0
    transport: ws
    allow_anonymous: true
data_dir: data
persistence:
  enabled: false
`)
	addr := startMoat(t, dir, "-c", "moat.yaml").addr(0)
	ask := func(src string) bool {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		nc.Write([]byte("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"))
		b, _ := io.ReadAll(io.LimitReader(nc, 16))
		return strings.HasPrefix(string(b), "HTTP/1.1 ")
	}
	answered := 0
	start := time.Now()
	for range 300 {
		if ask("127.0.0.15") {
			answered++
		}
	}
	// The burst, plus 20 per second of the flood's duration.
	if most := 100 + int(20*time.Since(start).Seconds()) + 2; answered < 100 || answered > most {
		t.Errorf("%d of 300 flood requests answered, want 100 to %d", answered, most)
	}
	if !ask("127.0.0.16") {
		t.Error("a request from another address was not answered")
	}
}

// TestSecurityMaxConnsPerAddress: a client on 127.0.0.17 holds the 3
// connections its address may have open (the attack holds sockets to
// exhaust the broker); a fourth is closed at accept, while 127.0.0.18
// connects. A connection that ends, refused or not, gives its place back.
func TestSecurityMaxConnsPerAddress(t *testing.T) {
	b := startDefended(t, defYAML+"defense: {max_conns_per_addr: 3}\n", broker.AuthenticatorFunc(func(_ context.Context, req *broker.ConnectRequest) broker.AuthResult {
		if req.Client.ClientID == "refused" {
			return broker.AuthResult{Code: packet.NotAuthorized, Reason: "test"}
		}
		return broker.AuthResult{NoOpinion: true}
	}), nil)
	// Refused and closed connections are released.
	for range 5 {
		c, err := dialFrom(t, "127.0.0.17", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		if ack, err := c.connect(t, "refused", "", ""); err != nil || ack.ReasonCode != packet.NotAuthorized {
			t.Fatalf("refused client: %v %v", ack, err)
		}
		c.nc.Close()
	}
	var held []*mqttClient
	for i := range 3 {
		var c *mqttClient
		testutil.CheckFor(t, 5*time.Second, func() error {
			// the refused connections' places come back once they end
			var err error
			if c, err = dialFrom(t, "127.0.0.17", b.addr); err != nil {
				return err
			}
			ack, err := c.connect(t, fmt.Sprintf("h%d", i), "", "")
			if err != nil {
				c.nc.Close()
				return err
			}
			if ack.ReasonCode != packet.Success {
				t.Fatalf("CONNACK %v", ack.ReasonCode)
			}
			return nil
		})
		held = append(held, c)
	}
	if !closedAtAccept(t, b, "127.0.0.17") {
		t.Fatal("a fourth connection from the address was admitted")
	}
	connectFrom(t, b, "127.0.0.18", "other", "", "").roundTrip(t)
	held[0].send(t, &packet.Disconnect{})
	held[0].nc.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if closedAtAccept(t, b, "127.0.0.17") {
			return errors.New("the ended connection's place did not come back")
		}
		return nil
	})
	for _, c := range held[1:] {
		c.roundTrip(t)
		c.nc.Close()
	}
}

// TestSecurityFloodLeavesOtherAddressesServed: `moat serve` with the
// default defense; 127.0.0.31 floods it with bare TCP connection attempts
// at 3,000 per second for a second (the attack, made by `moat bench
// flood`'s generator). While the flood runs, a client on 127.0.0.32 keeps
// connecting and one already connected on 127.0.0.33 keeps answering: both
// are unaffected. The refusals cost no log line each, and only a sample of
// them reaches the audit log.
func TestSecurityFloodLeavesOtherAddressesServed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the flood generator runs on Linux only")
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - address: 127.0.0.1:0
    transport: tcp
    allow_anonymous: true
data_dir: data
persistence:
  enabled: false
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	b := &defBroker{addr: p.addr(0)}
	held := connectFrom(t, b, "127.0.0.33", "held", "", "")

	var res *bench.FloodResult
	var floodErr error
	start := time.Now()
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		res, floodErr = bench.Flood(context.Background(), bench.FloodConfig{
			Addr: b.addr, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.31")},
			Rate: 3000, Duration: time.Second,
		})
	}()
	served := 0
	for done := false; !done && served < 50; {
		select {
		case <-flooding:
			done = true
		default:
		}
		c := connectFrom(t, b, "127.0.0.32", fmt.Sprintf("good-%d", served), "", "")
		c.roundTrip(t)
		c.nc.Close()
		held.roundTrip(t)
		served++
	}
	<-flooding
	if floodErr != nil {
		t.Fatal(floodErr)
	}
	t.Logf("flood: %+v; %d connections from another address served meanwhile", *res, served)
	if reached := res.Established + res.Reset; reached < res.Offered/2 {
		t.Fatalf("only %d of %d flood attempts reached the broker: the flood did not happen", reached, res.Offered)
	}
	if served < 3 {
		t.Errorf("%d connections from another address served during the flood, want several", served)
	}

	// No log line per refused socket: the lines naming the flooding
	// address are those of the connections admitted (burst 100, then 20
	// per second), which the broker logs when they end without CONNECT.
	n := 0
	for line := range strings.Lines(p.logs.String()) {
		if strings.Contains(line, "127.0.0.31") {
			n++
		}
	}
	if most := 100 + int(20*time.Since(start).Seconds()) + 5; n > most {
		t.Errorf("%d log lines name the flooding address, more than the %d connections admitted; refusals must not be logged one by one", n, most)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	data, err := os.ReadFile(filepath.Join(dir, "data", audit.DefaultFile))
	if err != nil {
		t.Fatal(err)
	}
	var sampled int
	var total int64
	for line := range strings.Lines(string(data)) {
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if f, ok := e.Get("addr"); !ok || f.Value() != "127.0.0.31" || e.Type != audit.TypeLimit {
			continue
		}
		sampled++
		if f, ok := e.Get("refused_total"); ok {
			total = max(total, f.Value().(int64))
		}
	}
	// Burst 100 and 20/s admitted: the rest, about 2,880, refused; the
	// first refusal and every 1000th are recorded.
	if sampled < 2 || sampled > 4 || total < 1000 {
		t.Errorf("audit log: %d sampled refusals of the flooding address, the last counting %d; want 2 to 4, over 1000", sampled, total)
	}
}

// TestGateRefusalAllocatesNothing: refusing a socket at the listener's
// gate (the per-address rate exceeded, then a banned address) allocates
// nothing, with the audit log on: a flood costs the checks and the
// accept, not garbage.
func TestGateRefusalAllocatesNothing(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	}), nil)
	gate := b.plan.defense.gate("gated")
	flood := &net.TCPAddr{IP: net.ParseIP("127.0.0.41"), Port: 40000}
	for range 200 {
		gate(flood)
	}
	if gate(flood) {
		t.Fatal("the flooding address is still admitted after 200 connections")
	}
	if n := testing.AllocsPerRun(1000, func() { gate(flood) }); n != 0 {
		t.Errorf("a rate refusal allocates %v times", n)
	}
	if _, err := b.plan.defense.g.AddBan(guard.Ban{Kind: guard.KindIP, Value: "127.0.0.42"}); err != nil {
		t.Fatal(err)
	}
	banned := &net.TCPAddr{IP: net.ParseIP("127.0.0.42"), Port: 40000}
	// Fewer runs than the address's burst (100): the ban refuses each.
	if n := testing.AllocsPerRun(50, func() { gate(banned) }); n != 0 {
		t.Errorf("a ban refusal allocates %v times", n)
	}
	if gate(banned) {
		t.Fatal("banned address admitted")
	}
}

// TestBansInForceAtStartAreAudited: bans.json holds two bans in force and
// one expired when the broker starts. Each ban in force gets a ban.load
// entry (before any client is served), the expired one none, and the log
// verifies; a second start records them again, so every run's part of the
// chain shows the bans that refused its clients.
func TestBansInForceAtStartAreAudited(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) // the injected clock's start
	var want []guard.Ban
	err := guard.File{Path: filepath.Join(dir, guard.BansFileName)}.Update(func([]guard.Ban) ([]guard.Ban, error) {
		var out []guard.Ban
		for _, b := range []struct {
			kind  guard.Kind
			value string
			d     time.Duration
			ago   time.Duration
		}{
			// In the order of creation, as the bans are listed.
			{guard.KindUsername, "mallory", 0, time.Hour},
			{guard.KindIP, "127.0.0.51", time.Hour, time.Minute},
			{guard.KindClientID, "gone", time.Minute, time.Hour},
		} {
			nb, err := guard.NewManualBan(b.kind, b.value, b.d, "test "+b.value, now.Add(-b.ago), rand.Reader)
			if err != nil {
				return nil, err
			}
			out = append(out, nb)
		}
		want = out[:2]
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	noOpinion := broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	})
	for run := 1; run <= 2; run++ {
		b := startDefendedIn(t, dir, defYAML, noOpinion, nil, false)
		if !closedAtAccept(t, b, "127.0.0.51") {
			t.Fatal("the banned address was admitted")
		}
		connectFrom(t, b, "127.0.0.52", "fine", "", "").nc.Close()
		b.stop()

		path := filepath.Join(dir, audit.DefaultFile)
		if n := auditTypes(t, path)[audit.TypeBanLoad]; n != 2*run {
			t.Fatalf("run %d: %d ban.load entries, want %d", run, n, 2*run)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// This run's part of the log: from its audit.start on.
		var types []string
		var loaded []*audit.Entry
		for line := range strings.Lines(string(data)) {
			e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
			if err != nil {
				t.Fatal(err)
			}
			if e.Type == audit.TypeStart {
				types, loaded = nil, nil
			}
			types = append(types, e.Type)
			if e.Type == audit.TypeBanLoad {
				loaded = append(loaded, e)
			}
		}
		if len(types) < 3 || types[0] != audit.TypeStart || types[1] != audit.TypeBanLoad || types[2] != audit.TypeBanLoad {
			t.Fatalf("run %d: entries %v, want audit.start then the two ban.load before anything else", run, types)
		}
		for i, e := range loaded {
			w := want[i]
			for k, v := range map[string]any{"ban": w.ID, "kind": string(w.Kind), "value": w.Value, "reason": w.Reason,
				"source": guard.SourceManual, "count": int64(2), "created": w.Created.Format(time.RFC3339)} {
				if f, ok := e.Get(k); !ok || f.Value() != v {
					t.Errorf("run %d: ban.load %d: %s = %v, want %v", run, i, k, f.Value(), v)
				}
			}
			f, ok := e.Get("expires")
			if w.Expires.IsZero() == ok || ok && f.Value() != w.Expires.Format(time.RFC3339) {
				t.Errorf("run %d: ban.load %d: expires %v, want %v", run, i, f.Value(), w.Expires)
			}
		}
		if code, out, errOut := runAudit(t, path); code != 0 {
			t.Fatalf("run %d: moat audit verify: exit %d\n%s%s", run, code, out, errOut)
		}
	}
}

// TestSecurityBanBetweenCheckAndAttach: a ban on client "victim" is added
// in the instant after the broker checked its identity at CONNECT and
// before its session is attached (the attack wins that race; the test
// forces it with the defense's hook in that window, not with timing). The
// ban's disconnect found no attached client to end, so the broker checks
// again once the client is attached: the client receives no CONNACK and
// is not left connected, and the refusal is audited; a client connecting
// beside it is unaffected.
func TestSecurityBanBetweenCheckAndAttach(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(context.Context, *broker.ConnectRequest) broker.AuthResult {
		return broker.AuthResult{NoOpinion: true}
	}), nil)
	d := b.plan.defense
	var inWindow atomic.Int64
	hook := func(c *broker.Client) {
		if c.ClientID != "victim" {
			return
		}
		inWindow.Add(1)
		if _, err := d.g.AddBan(guard.Ban{Kind: guard.KindClientID, Value: "victim", Reason: "added in the window"}); err != nil {
			t.Error(err)
		}
	}
	d.checked.Store(&hook)

	c, err := dialFrom(t, "127.0.0.61", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	if ack, err := c.connect(t, "victim", "", ""); err == nil {
		t.Fatalf("the client banned in the window got CONNACK %v", ack.ReasonCode)
	}
	if inWindow.Load() != 1 {
		t.Fatalf("the window was reached %d times, want 1", inWindow.Load())
	}
	connectFrom(t, b, "127.0.0.62", "bystander", "", "").roundTrip(t)
	testutil.WaitFor(t, "the banned client's connection to end", 5*time.Second, func() bool {
		for _, ci := range b.srv.Clients() {
			if ci.Client.ClientID == "victim" {
				return false
			}
		}
		return true
	})
	// Later attempts are refused at CONNECT as usual.
	if c2, err := dialFrom(t, "127.0.0.63", b.addr); err == nil {
		ack, err := c2.connect(t, "victim", "", "")
		if err != nil || ack.ReasonCode != packet.Banned {
			t.Errorf("a later connection as victim: %v %v, want CONNACK Banned", ack, err)
		}
		c2.nc.Close()
	}

	b.stop()
	data, err := os.ReadFile(filepath.Join(b.dir, audit.DefaultFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"stage":"attached"`) {
		t.Errorf("no ban.refuse entry at stage attached in the audit log:\n%s", data)
	}
}

// TestAdminBanChangesAudited: bans added and removed through the admin
// API go to the file the guard watches (here defense.bans_file, not the
// default bans.json), take effect in the broker, and every change is in
// the audit log as admin.action with the token's name; the log verifies.
func TestAdminBanChangesAudited(t *testing.T) {
	t.Parallel()
	custom := filepath.Join(t.TempDir(), "custom-bans.json")
	e := startAdminEnv(t, "defense:\n  bans_file: "+custom+"\n")
	code, b := e.call(t, "POST", "/api/v1/bans", e.operator, map[string]string{"kind": "ip", "value": "127.0.0.71", "reason": "audited"})
	if code != 201 {
		t.Fatalf("add ban: %d %s", code, b)
	}
	var ban struct{ ID string }
	json.Unmarshal(b, &ban)
	if file, _ := os.ReadFile(custom); !strings.Contains(string(file), ban.ID) {
		t.Fatalf("ban %s not in %s: %s", ban.ID, custom, file)
	}
	if _, err := os.Stat(filepath.Join(e.data, guard.BansFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the API wrote the default bans file too (%v)", err)
	}
	// In force: the broker's watcher loads the file it was told to.
	addr := fmt.Sprintf("127.0.0.1:%d", e.mqtt)
	testutil.WaitFor(t, "the API's ban to refuse 127.0.0.71 at accept", 10*time.Second, func() bool {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.71")}, Timeout: 2 * time.Second}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			return true // reset before the dial returned
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = nc.Read(make([]byte, 1))
		return errors.Is(err, syscall.ECONNRESET)
	})
	if code, b := e.call(t, "DELETE", "/api/v1/bans/"+ban.ID, e.operator, nil); code != 200 {
		t.Fatalf("remove ban: %d %s", code, b)
	}
	e.proc.cmd.Process.Signal(syscall.SIGTERM)
	<-e.proc.done

	path := filepath.Join(e.data, audit.DefaultFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		en, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if en.Type != audit.TypeAdminAction {
			continue
		}
		act, _ := en.Get("action")
		tok, _ := en.Get("token")
		res, _ := en.Get("result")
		if tok.Value() == "ci-operator" && res.Value() == "ok" {
			actions[act.Value().(string)] = true
		}
	}
	if !actions["ban.add"] || !actions["ban.remove"] {
		t.Errorf("admin.action entries %v, want ban.add and ban.remove by ci-operator", actions)
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
}

// TestSecurityMosquittoConfDefenseAndAudit is the acceptance
// check: an unchanged mosquitto.conf with a password_file and an
// acl_file, served with the defense and audit defaults; from separate
// loopback addresses a connection flood (127.0.0.90), password guessing
// (127.0.0.91, as bob) and topic scanning (127.0.0.92, as carol, whom
// the ACL lets read nothing). Each is cut off, alice keeps working
// throughout, and DATA_DIR/audit.log verifies until a byte of it is
// changed.
func TestSecurityMosquittoConfDefenseAndAudit(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_passwd")
	if runtime.GOOS != "linux" {
		t.Skip("the flood generator runs on Linux only")
	}
	dir := t.TempDir()
	pw, acl := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl")
	makePasswd(t, pw, "alice", "bob", "carol")
	writeFile(t, acl, accessACL)
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\nacl_file %s\n", ports[0], pw, acl))
		return []string{"-c", "mosquitto.conf", "--data", filepath.Join(dir, "data")}
	})
	b := &defBroker{addr: p.addr(0)}
	alice := connectFrom(t, b, "127.0.0.93", "alice-1", "alice", "alice-pw")

	// The flood: cut at accept beyond the address's burst (its
	// refusals are counted in the audit log's samples, below; a probe
	// right after it could fall on one of the 20 admissions a second).
	res, err := bench.Flood(context.Background(), bench.FloodConfig{Addr: b.addr,
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.90")}, Rate: 3000, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Established+res.Reset < res.Offered/2 {
		t.Fatalf("flood: %+v", res)
	}
	alice.roundTrip(t)

	// Password guessing: 10 failures in a minute ban the address and bob.
	for i := range 10 {
		c, err := dialFrom(t, "127.0.0.91", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := c.connect(t, "guesser", "bob", fmt.Sprintf("guess-%d", i))
		c.nc.Close()
		if err != nil || ack.ReasonCode != packet.BadUsernameOrPassword {
			t.Fatalf("guess %d: %v %v", i, ack, err)
		}
	}
	if !closedAtAccept(t, b, "127.0.0.91") {
		t.Error("the guessing address is still admitted")
	}
	if c, err := dialFrom(t, "127.0.0.94", b.addr); err == nil {
		ack, err := c.connect(t, "bob-1", "bob", "bob-pw")
		c.nc.Close()
		if err != nil || ack.ReasonCode != packet.Banned {
			t.Errorf("bob with the right password from elsewhere: %v %v, want CONNACK Banned", ack, err)
		}
	}
	alice.roundTrip(t)

	// Topic scanning: 20 denied SUBSCRIBE filters disconnect and ban.
	scan := connectFrom(t, b, "127.0.0.92", "carol-1", "carol", "carol-pw")
	for i := range 20 {
		if err := scan.send(t, &packet.Subscribe{PacketID: uint16(i + 1), Subscriptions: []packet.Subscription{{Filter: fmt.Sprintf("alice/%d", i)}}}); err != nil {
			break
		}
	}
	if code := scan.readDisconnect(t); code != packet.NotAuthorized {
		t.Errorf("scanner disconnected with %v, want 0x87", code)
	}
	if !closedAtAccept(t, b, "127.0.0.92") {
		t.Error("the scanning address is still admitted")
	}
	alice.roundTrip(t)
	connectFrom(t, b, "127.0.0.93", "alice-2", "alice", "alice-pw").roundTrip(t)

	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	path := filepath.Join(dir, "data", audit.DefaultFile)
	n := auditTypes(t, path)
	if n[audit.TypeAuthFailure] != 10 || n[audit.TypeLimit] < 1 || n[audit.TypeDetect] < 2 || n[audit.TypeBanAdd] < 4 ||
		n[audit.TypeAuthzDeny] < 10 || n[audit.TypeBanRefuse] < 1 {
		t.Errorf("audit entries: %v", n)
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var floodRefused int64
	for line := range strings.Lines(string(data)) {
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if a, _ := e.Get("addr"); e.Type == audit.TypeLimit && a.Value() == "127.0.0.90" {
			if f, ok := e.Get("refused_total"); ok {
				floodRefused = max(floodRefused, f.Value().(int64))
			}
		}
	}
	if floodRefused < 1000 {
		t.Errorf("the flood's sampled refusals count %d, want over 1000 (3,000 attempts, about 120 admitted)", floodRefused)
	}
	i := strings.Index(string(data), `"type":"auth.failure"`)
	data[i+len(`"type":"auth.failure","fields":{"addr":"127.0.0.`)] ^= 1 // another address
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	line := strings.Count(string(data[:i]), "\n") + 1
	if code, out, errOut := runAudit(t, path); code == 0 || !strings.Contains(out+errOut, fmt.Sprintf("audit.log:%d: ", line)) ||
		!strings.Contains(out+errOut, "the entry was changed") {
		t.Errorf("moat audit verify of a log changed at line %d: exit %d\n%s%s", line, code, out, errOut)
	}
}
