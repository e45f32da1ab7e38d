package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// testNode is one broker with its cluster Node and a plain listener.
type testNode struct {
	node *Node
	srv  *broker.Server
	addr string // MQTT listener
}

// freePorts reserves n loopback ports by binding and closing them; a
// start that loses a port to another process is retried by the caller.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// startCluster starts n brokers joined in one cluster on loopback, with
// plain routes, and waits until every node's key-value store is ready.
// Each of before runs for every node before it is attached to its broker.
func startCluster(t *testing.T, n int, before ...func(i int, nd *Node)) []*testNode {
	t.Helper()
	for attempt := 0; ; attempt++ {
		nodes, err := tryStartCluster(t, n, before...)
		if err == nil {
			return nodes
		}
		if attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("retrying the cluster start: %v", err)
	}
}

func tryStartCluster(t *testing.T, n int, before ...func(i int, nd *Node)) ([]*testNode, error) {
	return startNodesHooked(t, t.TempDir(), freePorts(t, n), before)
}

// startFresh starts n nodes as startNodesLogged does, each time on a new
// directory and new route ports, up to three times: a port freePorts
// found free may be taken by another process before the embedded server
// listens on it (the server then never gets ready), and a new cluster
// can start anywhere. It fails t after the third attempt.
func startFresh(t *testing.T, n int, before []func(i int, nd *Node), rec *logRecorder, configure ...func(*broker.Config)) []*testNode {
	t.Helper()
	for attempt := 0; ; attempt++ {
		nodes, err := startNodesLogged(t, t.TempDir(), freePorts(t, n), before, rec, configure...)
		if err == nil {
			return nodes
		}
		if attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("retrying the cluster start: %v", err)
	}
}

// startNodes starts one node per route address, node i named n<i+1> with
// its JetStream store in dir/n<i+1>, and waits until they are ready: a
// cluster started again on the same dir and routes is the same cluster.
// Each broker's Config may be changed by configure.
func startNodes(t *testing.T, dir string, routes []string, configure ...func(*broker.Config)) ([]*testNode, error) {
	return startNodesHooked(t, dir, routes, nil, configure...)
}

// startOwn starts n nodes as startNodesHooked does, on a new directory
// and new route ports, and returns them with both, for restarts. A port
// freePorts found free may be taken by another test's listener before
// the embedded server binds it (the tests run in parallel): the start
// is then made again elsewhere, up to three times in all, with the
// hooks called again on the new nodes (they must only set up the node
// they are given, as a test clock's hook does).
func startOwn(t *testing.T, n int, before ...func(i int, nd *Node)) (nodes []*testNode, dir string, routes []string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		dir, routes = t.TempDir(), freePorts(t, n)
		var err error
		nodes, err = startNodesHooked(t, dir, routes, before)
		if err == nil {
			return nodes, dir, routes
		}
		if attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("retrying the cluster start: %v", err)
	}
}

// restartNodes starts a test's stopped cluster again on its stores in
// dir, as startNodesHooked does, and fails t if it cannot. A route port
// of the run before may have been taken meanwhile by another test's
// listener (the tests run in parallel): the nodes then do not get
// ready, and all of them are started again on new route ports, up to
// twice. JetStream knows its peers by name, not by address.
func restartNodes(t *testing.T, dir string, routes []string, before ...func(i int, nd *Node)) []*testNode {
	t.Helper()
	for attempt := 0; ; attempt++ {
		nodes, err := startNodesHooked(t, dir, routes, before)
		if err == nil {
			return nodes
		}
		if attempt >= 2 || !strings.Contains(err.Error(), "did not start within") {
			t.Fatal(err)
		}
		t.Logf("restarting on new route ports: %v", err)
		routes = freePorts(t, len(routes))
	}
}

// startNodesHooked is startNodes with functions called on each node
// before its broker is attached.
func startNodesHooked(t *testing.T, dir string, routes []string, before []func(i int, nd *Node), configure ...func(*broker.Config)) ([]*testNode, error) {
	return startNodesLogged(t, dir, routes, before, nil, configure...)
}

// startNodesLogged is startNodesHooked with every log record of the
// nodes and brokers also given to rec (nil: none).
func startNodesLogged(t *testing.T, dir string, routes []string, before []func(i int, nd *Node), rec *logRecorder,
	configure ...func(*broker.Config)) ([]*testNode, error) {
	return launchNodes(t.Cleanup, testLog(t), dir, routes, before, rec, configure...)
}

// launchNodes is startNodesLogged for an owner that is not a single
// test: the nodes log to h, and their shutdown is given to cleanup,
// which runs the functions it was given last-in first-out.
func launchNodes(cleanup func(func()), h slog.Handler, dir string, routes []string, before []func(i int, nd *Node),
	rec *logRecorder, configure ...func(*broker.Config)) ([]*testNode, error) {
	n := len(routes)
	if rec != nil {
		h = &recordingHandler{next: h, rec: rec}
	}
	log := slog.New(h)
	var nodes []*testNode
	var started []*Node
	fail := func(err error) ([]*testNode, error) {
		for _, s := range started {
			s.Close()
		}
		return nil, err
	}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		nd, err := Start(Config{Name: "test", Node: name, Listen: routes[i], Peers: routes,
			StoreDir: filepath.Join(dir, name), Logger: log.With("node", name), RetainedSpill: testSpill(dir, name),
			RetainedSpillKey: testSpillKey, HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, setupAttempt: testSetupAttempt})
		if err != nil {
			return fail(err)
		}
		started = append(started, nd)
	}
	for i, nd := range started {
		bc := broker.Config{Cluster: nd, Authorizer: broker.AllowAll, AllowAnonymous: true,
			Logger: log.With("node", fmt.Sprintf("n%d", i+1))}
		for _, f := range configure {
			f(&bc)
		}
		srv, err := broker.New(bc)
		if err != nil {
			return fail(err)
		}
		for _, f := range before {
			f(i, nd)
		}
		nd.Attach(srv)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ctx, ln, broker.ListenerConfig{Name: "plain"}) }()
		cleanup(func() {
			cancel()
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = srv.Shutdown(sctx)
			scancel()
			wg.Wait()
		})
		nodes = append(nodes, &testNode{node: nd, srv: srv, addr: ln.Addr().String()})
	}
	// Cleanups run last-in first-out: the nodes close after every broker.
	cleanup(func() {
		for _, nd := range started {
			nd.Close()
		}
	})
	for _, tn := range nodes {
		select {
		case <-tn.node.Ready():
		case <-time.After(60 * time.Second):
			return nil, errors.New("key-value store not ready within 60 s")
		}
	}
	return nodes, nil
}

// logRecorder keeps the log records given to it (recordingHandler).
// Safe for concurrent use.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

// find returns the records at level whose message is msg.
func (r *logRecorder) find(level slog.Level, msg string) []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slog.Record
	for _, rec := range r.records {
		if rec.Level == level && rec.Message == msg {
			out = append(out, rec)
		}
	}
	return out
}

// recordingHandler gives every record to rec, with the attributes
// added by With, and to next.
type recordingHandler struct {
	next  slog.Handler
	rec   *logRecorder
	attrs []slog.Attr
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	c := r.Clone()
	c.AddAttrs(h.attrs...)
	h.rec.mu.Lock()
	h.rec.records = append(h.rec.records, c)
	h.rec.mu.Unlock()
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recordingHandler{next: h.next.WithAttrs(as), rec: h.rec, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	return &recordingHandler{next: h.next.WithGroup(name), rec: h.rec, attrs: h.attrs}
}

// attrOf returns the value of the attribute key of r.
func attrOf(r slog.Record, key string) slog.Value {
	var v slog.Value
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value
			return false
		}
		return true
	})
	return v
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func dial(t *testing.T, addr, id string, v client.Version) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, Version: v, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t *testing.T, c *client.Client, qos byte, filters ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var subs []client.Subscription
	for _, f := range filters {
		subs = append(subs, client.Subscription{Filter: f, QoS: qos})
	}
	codes, err := c.Subscribe(ctx, subs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range codes {
		if byte(code) != qos {
			t.Fatalf("SUBACK %v, want QoS %d", codes, qos)
		}
	}
}

// isProbe tells whether m is one of awaitRoute's probes.
func isProbe(m *client.Message) bool { return strings.HasPrefix(string(m.Payload), "probe") }

// awaitRoute publishes probes on topic from pub until sub receives one:
// the subscription's interest has reached the publishing node. The
// probes received are drained.
func awaitRoute(t *testing.T, pub, sub *client.Client, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	// Probes are numbered. Once one arrived the route is up, and every
	// probe sent after it arrives too: wait for the last one sent, so
	// that none comes after awaitRoute returned (to a test that counts
	// its messages), then drain for a moment in case one was reordered.
	sent, routed := 0, false
	for {
		if !routed {
			sent++
			if err := pub.Publish(ctx, &client.Message{Topic: topic, Payload: []byte("probe " + strconv.Itoa(sent))}); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case m := <-sub.Messages():
			if m.Topic != topic {
				t.Fatalf("probe: got %q", m.Topic)
			}
			routed = true
			if string(m.Payload) != "probe "+strconv.Itoa(sent) {
				continue
			}
			for {
				select {
				case <-sub.Messages():
				case <-time.After(200 * time.Millisecond):
					return
				}
			}
		case <-tick.C:
		case <-ctx.Done():
			if routed {
				t.Fatalf("probe %d of %d never arrived", sent, sent)
			}
			t.Fatal("no route to the subscribing node within 30 s")
		}
	}
}

func TestCrossNodeQoS(t *testing.T) {
	nodes := commonCluster(t)
	dups := nodes[2].node.Status().Duplicates
	for _, qos := range []byte{0, 1, 2} {
		t.Run(fmt.Sprintf("QoS%d", qos), func(t *testing.T) {
			q := strconv.Itoa(int(qos))
			sub := dial(t, nodes[2].addr, "sub"+q, client.V5)
			// Overlapping filters: the node receives two copies from NATS
			// and delivers one.
			subscribe(t, sub, qos, "q"+q+"/+/c", "q"+q+"/#")
			pub := dial(t, nodes[0].addr, "pub"+q, client.V311)
			awaitRoute(t, pub, sub, "q"+q+"/probe/c")
			const n = 200
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range n {
				if err := pub.Publish(ctx, &client.Message{Topic: "q" + q + "/x/c", QoS: qos, Payload: []byte(strconv.Itoa(i))}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range n {
				select {
				case m := <-sub.Messages():
					if string(m.Payload) != strconv.Itoa(i) || m.QoS != qos {
						t.Fatalf("message %d: got %q at QoS %d (order or QoS lost)", i, m.Payload, m.QoS)
					}
				case <-ctx.Done():
					t.Fatalf("received %d of %d", i, n)
				}
			}
			select {
			case m := <-sub.Messages():
				t.Fatalf("extra message %q: a duplicate", m.Payload)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
	// The publishing node forwarded each message once, whatever the
	// number of subscribing filters.
	if st := nodes[2].node.Status(); st.Duplicates == dups {
		t.Errorf("no duplicates dropped on the subscribing node: %+v", st)
	}
	if st := nodes[0].node.Status(); len(st.Routes) != 2 || st.MetaSize != 3 {
		t.Errorf("status of n1: %+v", st)
	}
}

// TestRemoteMessagesNotForwardedAgain checks that a node delivers what it
// received from another node to local subscribers only.
func TestRemoteMessagesNotForwardedAgain(t *testing.T) {
	nodes := commonCluster(t)
	subB := dial(t, nodes[1].addr, "subB", client.V5)
	subC := dial(t, nodes[2].addr, "subC", client.V5)
	subscribe(t, subB, 1, "f/#")
	subscribe(t, subC, 1, "f/#")
	pub := dial(t, nodes[0].addr, "pubA", client.V5)
	awaitRoute(t, pub, subB, "f/probe")
	awaitRoute(t, pub, subC, "f/probe")
	before := nodes[1].node.Status().Forwarded + nodes[2].node.Status().Forwarded
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, &client.Message{Topic: "f/1", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{subB, subC} {
		for got := false; !got; {
			select {
			case m := <-c.Messages():
				if isProbe(m) {
					continue // a late probe of awaitRoute
				}
				if string(m.Payload) != "x" {
					t.Fatalf("got %q", m.Payload)
				}
				got = true
			case <-ctx.Done():
				t.Fatal("not delivered")
			}
		}
	}
	if after := nodes[1].node.Status().Forwarded + nodes[2].node.Status().Forwarded; after != before {
		t.Fatalf("receiving nodes forwarded %d messages", after-before)
	}
}

func TestRetainedAcrossNodes(t *testing.T) {
	nodes := commonCluster(t)
	pub := dial(t, nodes[0].addr, "rpub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, &client.Message{Topic: "r/a/b", QoS: 1, Retain: true, Payload: []byte("v1"),
		Properties: client.Properties{ContentType: "text/plain", Present: 1 << packet.PropContentType}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the retained message on n3", 30*time.Second, func() bool {
		m, _ := nodes[2].srv.RetainedMatch("r/#", 10)
		return len(m) == 1
	})
	sub := dial(t, nodes[2].addr, "rsub", client.V5)
	subscribe(t, sub, 1, "r/+/b")
	select {
	case m := <-sub.Messages():
		if m.Topic != "r/a/b" || string(m.Payload) != "v1" || !m.Retain || m.Properties.ContentType != "text/plain" {
			t.Fatalf("replay: %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("no retained replay on another node")
	}
	// Cleared on a third node: gone everywhere.
	pub2 := dial(t, nodes[1].addr, "rpub2", client.V311)
	if err := pub2.Publish(ctx, &client.Message{Topic: "r/a/b", QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	for _, tn := range []*testNode{nodes[0], nodes[2]} {
		testutil.WaitFor(t, "the retained message cleared", 30*time.Second, func() bool {
			m, _ := tn.srv.RetainedMatch("r/#", 10)
			return len(m) == 0
		})
	}
}

func TestTakeoverAcrossNodes(t *testing.T) {
	nodes := commonCluster(t)
	first := dial(t, nodes[0].addr, "device-7", client.V5)
	testutil.WaitFor(t, "the first claim", 30*time.Second, func() bool {
		kv := nodes[0].node.kvs()
		kv.mu.Lock()
		defer kv.mu.Unlock()
		_, ok := kv.claims["device-7"]
		return ok
	})
	second := dial(t, nodes[1].addr, "device-7", client.V5)
	select {
	case <-first.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first connection was not taken over")
	}
	var re *client.ReasonError
	if err := first.Err(); !errors.As(err, &re) || re.Code != packet.SessionTakenOver {
		t.Fatalf("first connection ended with %v, want DISCONNECT 0x8E", err)
	}
	if !second.IsConnected() {
		t.Fatal("the second connection was closed too")
	}
}

// TestNATSRouteDialIsAWarning checks the level of the embedded server's
// lines: a route that cannot be dialled yet (a peer not started) is a
// warning; other errors stay errors.
func TestNATSRouteDialIsAWarning(t *testing.T) {
	t.Parallel()
	var buf testutil.Buffer
	l := natsLogger{slog.New(slog.NewTextHandler(&buf, nil))}
	l.Errorf("Error trying to connect to route (attempt %v): %v", 1, "dial tcp 127.0.0.1:7422: connect: connection refused")
	l.Errorf("JetStream cluster %s", "failed")
	// A route whose peer was killed while the server wrote to it (seen
	// on the survivors of a SIGKILL): a warning. The same error on a
	// client connection stays an error.
	l.Errorf("127.0.0.1:60596 - rid:60 - Error flushing: %v", "writev tcp 127.0.0.1:39685->127.0.0.1:60596: writev: connection reset by peer")
	l.Errorf("127.0.0.1:50000 - cid:7 - Error flushing: %v", "writev: connection reset by peer")
	// The advice against payloads over 8 MB, which the embedded server
	// has on purpose: below Info (the handler's default level).
	l.Warnf("Maximum payloads over %v are generally discouraged and could lead to poor performance", "8.00 MB")
	l.Warnf("Some other %s", "warning")
	out := buf.String()
	if strings.Contains(out, "Maximum payloads") || !strings.Contains(out, `level=WARN msg="nats: Some other warning"`) {
		t.Fatalf("levels:\n%s", out)
	}
	if !strings.Contains(out, `level=WARN msg="nats: Error trying to connect to route (attempt 1)`) ||
		!strings.Contains(out, `level=ERROR msg="nats: JetStream cluster failed"`) ||
		!strings.Contains(out, `level=WARN msg="nats: 127.0.0.1:60596 - rid:60 - Error flushing`) ||
		!strings.Contains(out, `level=ERROR msg="nats: 127.0.0.1:50000 - cid:7 - Error flushing`) {
		t.Fatalf("levels:\n%s", out)
	}
}

// TestStartWithoutPeersSaysSo: a node started through the Go API with no
// other node among its peers (only its own address), whose embedded
// server would never get ready, is refused at once and says why, rather
// than blaming its port after the start timeout.
func TestStartWithoutPeersSaysSo(t *testing.T) {
	t.Parallel()
	routes := freePorts(t, 1)
	n, err := Start(Config{Name: "test", Node: "alone", Listen: routes[0], Peers: routes, StoreDir: t.TempDir(),
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		n.Close()
		t.Fatal("a node without peers started")
	}
	if !strings.Contains(err.Error(), "Peers lists no other node") {
		t.Fatalf("error %q does not name the missing peers", err)
	}
}

// TestConfigRefusesNegativeCatchUpBounds: the catch-up's bounds are
// checked before anything starts.
func TestConfigRefusesNegativeCatchUpBounds(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{CatchUpIdle: -time.Second}, {CatchUpMax: -time.Minute}} {
		cfg.Name, cfg.Node, cfg.Listen, cfg.Peers, cfg.StoreDir = "test", "n1", "127.0.0.1:0", []string{"127.0.0.1:1"}, t.TempDir()
		if n, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "is negative") {
			if n != nil {
				n.Close()
			}
			t.Fatalf("Start(%v, %v): %v; want the negative bound refused", cfg.CatchUpIdle, cfg.CatchUpMax, err)
		}
	}
}

// waitingClaim connects clientID on tn while its claims fail as if the
// claims bucket had no leader, until the test clears the flag returned,
// and waits until the claim waits to be written again.
func waitingClaim(t *testing.T, tn *testNode, clientID string) (*client.Client, *atomic.Bool) {
	t.Helper()
	return waitingClaimOf(t, tn, clientID, func() *client.Client { return dial(t, tn.addr, clientID, client.V5) })
}

// waitingClaimOf is waitingClaim with the client connected by dial.
func waitingClaimOf(t *testing.T, tn *testNode, clientID string, dial func() *client.Client) (*client.Client, *atomic.Bool) {
	t.Helper()
	unreachable := new(atomic.Bool)
	unreachable.Store(true)
	kv := tn.node.kvs()
	f := func(id string) error {
		if id == clientID && unreachable.Load() {
			return jetstream.ErrNoStreamResponse
		}
		return nil
	}
	kv.failClaim.Store(&f)
	t.Cleanup(func() { kv.failClaim.Store(nil) })
	c := dial()
	testutil.WaitFor(t, tn.node.cfg.Node+"'s claim to wait", 30*time.Second, func() bool {
		_, late := claimState(tn, clientID)
		return late
	})
	return c, unreachable
}

// claimState returns whether tn holds a stored claim of clientID and
// whether one waits to be written late.
func claimState(tn *testNode, clientID string) (stored, late bool) {
	kv := tn.node.kvs()
	kv.mu.Lock()
	defer kv.mu.Unlock()
	_, stored = kv.claims[clientID]
	u, unwritten := kv.unwritten[clientID]
	return stored, unwritten && u.failed && !u.superseded
}

// claimNoted reports whether tn still notes a claim of clientID as not
// written (queued, waiting, or superseded and not yet given up).
func claimNoted(tn *testNode, clientID string) bool {
	kv := tn.node.kvs()
	kv.mu.Lock()
	defer kv.mu.Unlock()
	_, ok := kv.unwritten[clientID]
	return ok
}

// expectTakenOver waits for c to end with DISCONNECT 0x8E.
func expectTakenOver(t *testing.T, c *client.Client, what string) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s was not taken over", what)
	}
	var re *client.ReasonError
	if err := c.Err(); !errors.As(err, &re) || re.Code != packet.SessionTakenOver {
		t.Fatalf("%s ended with %v, want DISCONNECT 0x8E", what, err)
	}
}

// TestLateClaimAfterRestart: a node started again takes the claims made
// before it started as seen. A claim of its that is written late is then
// written over a claim of the same client ID made before the node
// started, and takes over that connection. Before, the node took no claim
// as seen until its watch delivered one: such a claim found the earlier
// one in the bucket, counted it as later, and waited for the watch to
// deliver it, which it never would; neither connection was taken over.
func TestLateClaimAfterRestart(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	earlier := dial(t, nodes[1].addr, "restart-x", client.V5)
	awaitClaimHeard(t, nodes[1], "restart-x")
	stopNode(t, nodes[0])
	var unreachable atomic.Bool
	unreachable.Store(true)
	f := func(id string) error {
		if id == "restart-x" && unreachable.Load() {
			return jetstream.ErrNoStreamResponse
		}
		return nil
	}
	n1 := restartWithListener(t, dir, routes, 0, func(nd *Node) { nd.kvs().failClaim.Store(&f) })
	kv := n1.node.kvs()
	testutil.WaitFor(t, "n1's claims watch", 30*time.Second, func() bool {
		kv.mu.Lock()
		defer kv.mu.Unlock()
		return kv.watchers["claim"] != nil && n1.node.sessionsReady()
	})
	later := dial(t, n1.addr, "restart-x", client.V5)
	testutil.WaitFor(t, "n1's claim to wait", 30*time.Second, func() bool {
		_, late := claimState(n1, "restart-x")
		return late
	})
	unreachable.Store(false)
	expectTakenOver(t, earlier, "the connection on n2, made before n1 started")
	testutil.WaitFor(t, "n1's claim stored", 30*time.Second, func() bool {
		stored, _ := claimState(n1, "restart-x")
		return stored && !claimNoted(n1, "restart-x")
	})
	if !later.IsConnected() {
		t.Fatal("the connection on n1 ended")
	}
}

// TestRetainedOwnChangeWins: when another node's retained change of a
// topic comes before this node's in the bucket, the watch delivers it
// while this node's change waits to be written, or after this node wrote
// its own: the local store keeps its own change, which is the bucket's
// last value, as on every other node. Before, it took the other node's
// and then skipped its own as the watch delivered it: one node's cache
// disagreed with the bucket until the topic's next change.
func TestRetainedOwnChangeWins(t *testing.T) {
	nodes := commonCluster(t)
	n1, n2 := nodes[0], nodes[1]
	pub1 := dial(t, n1.addr, "rown-pub1", client.V5)
	pub2 := dial(t, n2.addr, "rown-pub2", client.V5)
	kv1, kv2 := n1.node.kvs(), n2.node.kvs()
	// theirs waits until n2 wrote its change of topic and n1's watch
	// delivered it.
	theirs := func(topic string) {
		t.Helper()
		var rev uint64
		testutil.WaitFor(t, "n2's change of "+topic+" in the bucket", 30*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e, err := kv2.retained.Get(ctx, topicTokens(topic))
			if err != nil {
				return false
			}
			r, err := decodeRetained(e.Value(), time.Now())
			if err != nil || string(r.msg.Payload) != "theirs" {
				return false
			}
			rev = e.Revision()
			return true
		})
		testutil.WaitFor(t, "n1's watch past n2's change", 30*time.Second, func() bool {
			return kv1.retSeen.Load() >= rev
		})
	}
	everywhere := func(topic, want string) {
		t.Helper()
		for _, tn := range nodes {
			testutil.WaitFor(t, tn.node.cfg.Node+"'s "+topic, 30*time.Second, func() bool {
				m, _ := tn.srv.RetainedMatch(topic, 1)
				return len(m) == 1 && string(m[0].Preview) == want
			})
		}
	}
	// failing makes n1's writes of topic fail as with the bucket
	// unreachable, until the returned func is called; failed waits until
	// one did.
	failing := func(t *testing.T, topic string) (failed func(), reachable func()) {
		var unreachable atomic.Bool
		var tries atomic.Int32
		unreachable.Store(true)
		f := func(tp string) error {
			if tp == topic && unreachable.Load() {
				tries.Add(1)
				return jetstream.ErrNoStreamResponse
			}
			return nil
		}
		kv1.failRetained.Store(&f)
		t.Cleanup(func() { kv1.failRetained.Store(nil) })
		t.Cleanup(func() {
			// The next subtest's changes are not late ones.
			testutil.WaitFor(t, "n1's late writes to end", 30*time.Second, func() bool { return !kv1.retFailing.Load() })
		})
		return func() {
				t.Helper()
				testutil.WaitFor(t, "a failed write of n1's change", 30*time.Second, func() bool { return tries.Load() > 0 })
			}, func() {
				unreachable.Store(false)
			}
	}
	t.Run("waiting, then a later change of another node", func(t *testing.T) {
		// n1's change waits while n2's, made after it, is stored: n1
		// keeps its own meanwhile, and once its write goes through, the
		// later one, n2's, is the value everywhere.
		failed, reachable := failing(t, "rown/a")
		publishRetained(t, pub1, "rown/a", "mine")
		failed()
		publishRetained(t, pub2, "rown/a", "theirs")
		theirs("rown/a")
		if got := retainedHere(n1, "rown/a"); got != "mine" {
			t.Fatalf("n1 holds %q while its own change waits, want mine", got)
		}
		reachable()
		everywhere("rown/a", "theirs")
		testutil.WaitFor(t, "n1's change to be done", 30*time.Second, func() bool {
			_, queued := kv1.ret.writes.get("rrown/a")
			return !queued
		})
		everywhere("rown/a", "theirs")
	})
	t.Run("waiting, later than the bucket's", func(t *testing.T) {
		// n2's change is stored first; n1's, made after it, waits and
		// is then written over it.
		publishRetained(t, pub2, "rown/c", "theirs")
		theirs("rown/c")
		failed, reachable := failing(t, "rown/c")
		publishRetained(t, pub1, "rown/c", "mine")
		failed()
		reachable()
		everywhere("rown/c", "mine")
	})
	t.Run("waiting, expired meanwhile", func(t *testing.T) {
		// n2's value is stored; n1's change of the topic waits and
		// expires: the topic then has no retained message anywhere,
		// not n2's older one back.
		publishRetained(t, pub2, "rown/e", "theirs")
		theirs("rown/e")
		failed, reachable := failing(t, "rown/e")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m := &client.Message{Topic: "rown/e", QoS: 1, Retain: true, Payload: []byte("mine")}
		m.Properties.SetMessageExpiry(1)
		expired := time.Now().Add(time.Second)
		if err := pub1.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		failed()
		// The cluster's code reads the time itself: its expiry takes
		// that second.
		testutil.WaitFor(t, "n1's change to expire", 30*time.Second, func() bool { return time.Now().After(expired) })
		reachable()
		// n1's store keeps its expired message until it is swept; it
		// serves it to nobody.
		for _, tn := range nodes[1:] {
			testutil.WaitFor(t, tn.node.cfg.Node+"'s rown/e cleared", 30*time.Second, func() bool {
				m, _ := tn.srv.RetainedMatch("rown/e", 1)
				return len(m) == 0
			})
		}
	})
	t.Run("written before the other is delivered", func(t *testing.T) {
		// n1's retained loop is held in its write while n2's change is
		// stored; n1's own is then stored after it, and the watch
		// delivers n2's first.
		held, unhold := holdWrite(t, &kv1.failRetained, "rown/b")
		publishRetained(t, pub1, "rown/b", "mine")
		held("n1's retained writer")
		publishRetained(t, pub2, "rown/b", "theirs")
		testutil.WaitFor(t, "n2's change in the bucket", 30*time.Second, func() bool {
			m, _ := nodes[2].srv.RetainedMatch("rown/b", 1)
			return len(m) == 1 && string(m[0].Preview) == "theirs"
		})
		unhold()
		everywhere("rown/b", "mine")
		pastOwn := func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e, err := kv1.retained.Get(ctx, topicTokens("rown/b"))
			return err == nil && kv1.retSeen.Load() >= e.Revision()
		}
		testutil.WaitFor(t, "n1's watch past its own change", 30*time.Second, pastOwn)
		if got := retainedHere(n1, "rown/b"); got != "mine" {
			t.Fatalf("n1 holds %q, want mine", got)
		}
	})
}

// holdWrite sets the write hook at hook (kvState.failClaim or
// failRetained) to hold the first write of key, and with it its bucket's
// loop, until unhold is called (at the latest as the test ends). held
// waits until that write is held; what names the writer in its failure.
func holdWrite(t *testing.T, hook *atomic.Pointer[func(string) error], key string) (held func(what string), unhold func()) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	f := func(k string) error {
		if k == key {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
		return nil
	}
	unhold = func() { released.Do(func() { close(release) }) }
	hook.Store(&f)
	t.Cleanup(func() { hook.Store(nil) })
	t.Cleanup(unhold)
	held = func(what string) {
		t.Helper()
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not take the write of %s", what, key)
		}
	}
	return held, unhold
}

// TestWatchStartedAgain: a bucket's watch that ends is started again,
// the claims' from the claim after the last one it applied: a claim
// written while the node had no watch still takes its connection over,
// and a retained message set meanwhile still reaches its cache.
func TestWatchStartedAgain(t *testing.T) {
	nodes := commonCluster(t)
	n1, n2 := nodes[0], nodes[1]
	earlier := dial(t, n1.addr, "rewatch-1", client.V5)
	awaitClaimHeard(t, n1, "rewatch-1", n2)
	// n1's claims loop is held in the write of another claim while its
	// watch is stopped and n2's claim is written: no watch of n1
	// delivers that claim.
	kv := n1.node.kvs()
	held, unhold := holdWrite(t, &kv.failClaim, "rewatch-hold")
	dial(t, n1.addr, "rewatch-hold", client.V5)
	held("n1's claim writer")
	stop := func(what string) jetstream.KeyWatcher {
		kv.mu.Lock()
		w := kv.watchers[what]
		kv.mu.Unlock()
		if err := w.Stop(); err != nil {
			t.Fatal(err)
		}
		return w
	}
	oldClaims, oldRetained := stop("claim"), stop("retained")
	later := dial(t, n2.addr, "rewatch-1", client.V5)
	awaitClaimHeard(t, n2, "rewatch-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := later.Publish(ctx, &client.Message{Topic: "rewatch/state", QoS: 1, Retain: true, Payload: []byte("on")}); err != nil {
		t.Fatal(err)
	}
	unhold()
	expectTakenOver(t, earlier, "the connection on n1")
	testutil.WaitFor(t, "the retained message on n1", 30*time.Second, func() bool {
		m, _ := n1.srv.RetainedMatch("rewatch/#", 10)
		return len(m) == 1
	})
	kv.mu.Lock()
	restarted := kv.watchers["claim"] != oldClaims && kv.watchers["retained"] != oldRetained
	kv.mu.Unlock()
	if !restarted {
		t.Fatal("a watch was not started again")
	}
	if !later.IsConnected() {
		t.Fatal("the later connection on n2 ended")
	}
}

// TestLateClaim: a client-ID claim that could not be written (the claims
// bucket electing a leader) waits to be written again. Written late, it
// takes over the connection the client had on another node before; and
// while it waits, a later connection on another node takes its
// connection over, and it is then not written. Before, such a claim was
// dropped at once: neither connection took the other over, and the same
// client ID stayed connected on two nodes. So is a claim queued behind
// one that waits, not tried yet: before, it was not taken over, and was
// then written over the later claim, taking over the newer connection.
// A waiting claim does not hold up the node's retained changes, which go
// to another bucket.
func TestLateClaim(t *testing.T) {
	nodes := commonCluster(t)
	n1, n2 := nodes[0], nodes[1]
	t.Run("retained changes go on", func(t *testing.T) {
		_, unreachable := waitingClaim(t, n1, "late-r")
		pub := dial(t, n1.addr, "late-r-pub", client.V5)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pub.Publish(ctx, &client.Message{Topic: "late-r/state", QoS: 1, Retain: true, Payload: []byte("on")}); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "the retained message on n2", 30*time.Second, func() bool {
			m, _ := n2.srv.RetainedMatch("late-r/#", 10)
			return len(m) == 1
		})
		if _, late := claimState(n1, "late-r"); !late {
			t.Fatal("the claim stopped waiting before the retained change was written")
		}
		unreachable.Store(false)
		testutil.WaitFor(t, "n1's claim stored", 30*time.Second, func() bool {
			stored, late := claimState(n1, "late-r")
			return stored && !late
		})
	})
	t.Run("written late", func(t *testing.T) {
		earlier := dial(t, n2.addr, "late-a", client.V5)
		testutil.WaitFor(t, "n2's claim, heard by n1", 30*time.Second, func() bool {
			stored, _ := claimState(n2, "late-a")
			if !stored {
				return false
			}
			kv2 := n2.node.kvs()
			kv2.mu.Lock()
			rev := kv2.claims["late-a"]
			kv2.mu.Unlock()
			return n1.node.kvs().seen.Load() >= rev
		})
		later, unreachable := waitingClaim(t, n1, "late-a")
		if !earlier.IsConnected() {
			t.Fatal("the connection on n2 ended before n1's claim was written")
		}
		unreachable.Store(false)
		expectTakenOver(t, earlier, "the connection on n2")
		testutil.WaitFor(t, "n1's claim stored", 30*time.Second, func() bool {
			stored, late := claimState(n1, "late-a")
			return stored && !late
		})
		if !later.IsConnected() {
			t.Fatal("the connection on n1 ended too")
		}
	})
	t.Run("a later claim ends it", func(t *testing.T) {
		waiting, unreachable := waitingClaim(t, n1, "late-b")
		later := dial(t, n2.addr, "late-b", client.V5)
		expectTakenOver(t, waiting, "the connection on n1")
		unreachable.Store(false)
		testutil.WaitFor(t, "n1's claim given up", 30*time.Second, func() bool {
			stored, _ := claimState(n1, "late-b")
			return !stored && !claimNoted(n1, "late-b")
		})
		if !later.IsConnected() {
			t.Fatal("the later connection on n2 was taken over by the claim written late")
		}
	})
	t.Run("a queued claim is taken over too", func(t *testing.T) {
		// late-h's claim fails and holds the queue: late-q's, behind
		// it, is not even tried.
		_, unreachable := waitingClaim(t, n1, "late-h")
		queued := dial(t, n1.addr, "late-q", client.V5)
		if stored, _ := claimState(n1, "late-q"); stored || !claimNoted(n1, "late-q") {
			t.Fatal("late-q's claim is not waiting behind late-h's")
		}
		later := dial(t, n2.addr, "late-q", client.V5)
		expectTakenOver(t, queued, "the connection on n1 whose claim was queued")
		unreachable.Store(false)
		testutil.WaitFor(t, "n1's claims written or given up", 30*time.Second, func() bool {
			stored, _ := claimState(n1, "late-h")
			return stored && !claimNoted(n1, "late-q")
		})
		if stored, _ := claimState(n1, "late-q"); stored {
			t.Fatal("n1 wrote late-q's claim after its connection was taken over")
		}
		if !later.IsConnected() {
			t.Fatal("the later connection on n2 was taken over by the queued claim")
		}
	})
}
