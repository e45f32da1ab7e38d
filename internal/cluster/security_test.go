package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// secLog records what a Node's Security was told, as lines.
type secLog struct {
	mu     sync.Mutex
	lines  []string
	synced int
}

func (l *secLog) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *secLog) BanSet(origin, id string, rec []byte) {
	l.add("ban " + origin + " " + id + " " + string(rec))
}
func (l *secLog) BanLifted(origin, id string) { l.add("lift " + origin + " " + id) }
func (l *secLog) FileSet(origin, name string, data []byte, at time.Time) {
	l.add("file " + origin + " " + name + " " + string(data))
}
func (l *secLog) Event(origin, kind string, data []byte) {
	l.add("event " + origin + " " + kind + " " + string(data))
}
func (l *secLog) Revocations(origin, issuer string, list []byte) {
	l.add("revocations " + origin + " " + issuer + " " + string(list))
}
func (l *secLog) Synced(bans, files map[string]bool) {
	l.mu.Lock()
	l.synced++
	l.mu.Unlock()
	var b, f []string
	for k := range bans {
		b = append(b, k)
	}
	for k := range files {
		f = append(f, k)
	}
	slices.Sort(b)
	slices.Sort(f)
	l.add(fmt.Sprintf("synced bans=%v files=%v", b, f))
}

func (l *secLog) syncs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.synced
}

func (l *secLog) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.lines, s)
}

// last returns the latest line that contains s, or "".
func (l *secLog) last(s string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.lines) - 1; i >= 0; i-- {
		if strings.Contains(l.lines[i], s) {
			return l.lines[i]
		}
	}
	return ""
}

func (l *secLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestSecurityStateAcrossNodes checks the cluster's carriage of security
// state: a ban set and lifted on one node, a shared file and an event
// reach the other nodes' Security with the origin node named, never the
// node that made them; and the nodes report being in sync once.
func TestSecurityStateAcrossNodes(t *testing.T) {
	t.Parallel()
	logs := []*secLog{{}, {}, {}}
	nodes := startCluster(t, 3, func(i int, nd *Node) { nd.SetSecurity(logs[i]) })
	for i, l := range logs {
		testutil.WaitFor(t, fmt.Sprintf("n%d in sync", i+1), 60*time.Second, func() bool { return l.has("synced bans=[] files=[]") })
	}
	nodes[0].node.PutBan("b1", []byte(`{"kind":"client_id"}`))
	nodes[1].node.PutFile("acl.conf", []byte("topic read #\n"))
	for _, i := range []int{1, 2} {
		testutil.WaitFor(t, "the ban on another node", 30*time.Second, func() bool { return logs[i].has(`ban n1 b1 {"kind":"client_id"}`) })
	}
	for _, i := range []int{0, 2} {
		testutil.WaitFor(t, "the file on another node", 30*time.Second, func() bool { return logs[i].has("file n2 acl.conf topic read #\n") })
	}
	nodes[2].node.LiftBan("b1")
	for _, i := range []int{0, 1} {
		testutil.WaitFor(t, "the lift on another node", 30*time.Second, func() bool { return logs[i].has("lift n3 b1") })
	}
	// Events reach the nodes connected now (the subscription's interest
	// crossed the routes when the nodes attached).
	testutil.CheckFor(t, 30*time.Second, func() error {
		if err := nodes[1].node.PublishEvent("revoke", []byte("serial 1f")); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
		if !logs[0].has("event n2 revoke serial 1f") || !logs[2].has("event n2 revoke serial 1f") {
			return fmt.Errorf("event not received everywhere")
		}
		return nil
	})
	if err := nodes[1].node.PublishEvent("bad.kind", nil); err == nil {
		t.Error("an event kind with a dot was accepted")
	}
	// No node is told of its own changes.
	for i, own := range []string{"ban n1 ", "file n2 ", "lift n3 "} {
		for _, line := range strings.Split(logs[i].String(), "\n") {
			if strings.HasPrefix(line, own) {
				t.Errorf("n%d was told of its own change: %q", i+1, line)
			}
		}
		if strings.Contains(logs[1].String(), "event n2") {
			t.Error("n2 received its own event")
		}
	}
	for i, l := range logs {
		if n := l.syncs(); n != 1 {
			t.Errorf("n%d synced %d times", i+1, n)
		}
	}
}

// TestSecurityWatchStartedAgain: a security bucket's watch that cannot
// start, or that ends, is started again: the node gets in sync, applies
// the other nodes' bans, and writes its own. Before, a watch that failed
// to start (seen in a full test run: the bucket's leader not answering
// in time) ended the node's security loop for good: never in sync, no
// other node's ban applied, none of its own written.
func TestSecurityWatchStartedAgain(t *testing.T) {
	t.Parallel()
	logs := []*secLog{{}, {}, {}}
	var tries atomic.Int32
	fail := func(what string) error {
		if what == "ban" && tries.Add(1) <= 2 {
			return context.DeadlineExceeded
		}
		return nil
	}
	nodes := startCluster(t, 3, func(i int, nd *Node) {
		nd.SetSecurity(logs[i])
		if i == 0 {
			nd.sec.failWatch.Store(&fail)
		}
	})
	testutil.WaitFor(t, "n1 in sync", 60*time.Second, func() bool { return logs[0].has("synced bans=[] files=[]") })
	if tries.Load() < 3 {
		t.Fatalf("the ban watch was tried %d times", tries.Load())
	}
	nodes[1].node.PutBan("w1", []byte(`{"kind":"client_id"}`))
	testutil.WaitFor(t, "n2's ban on n1", 30*time.Second, func() bool { return logs[0].has(`ban n2 w1 {"kind":"client_id"}`) })
	nodes[0].node.PutBan("w2", []byte(`{"kind":"username"}`))
	testutil.WaitFor(t, "n1's ban on n3", 30*time.Second, func() bool { return logs[2].has(`ban n1 w2 {"kind":"username"}`) })

	// Ended: started again, and the next ban still arrives.
	nd := nodes[0].node
	nd.sec.mu.Lock()
	w := nd.sec.watchers["ban"]
	nd.sec.mu.Unlock()
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n1's ban watch started again", 30*time.Second, func() bool {
		nd.sec.mu.Lock()
		defer nd.sec.mu.Unlock()
		return nd.sec.watchers["ban"] != w
	})
	nodes[2].node.PutBan("w3", []byte(`{"kind":"client_id"}`))
	testutil.WaitFor(t, "n3's ban on n1", 30*time.Second, func() bool { return logs[0].has(`ban n3 w3 {"kind":"client_id"}`) })
	if n := logs[0].syncs(); n != 1 {
		t.Errorf("n1 synced %d times", n)
	}
}

// TestSecurityStateAtStart checks that a node started after changes were
// made learns them from the buckets before it reports being in sync, with
// the keys the buckets hold (set and lifted).
func TestSecurityStateAtStart(t *testing.T) {
	t.Parallel()
	logs := []*secLog{{}, {}, {}}
	nodes := startCluster(t, 3, func(i int, nd *Node) {
		if i < 2 {
			nd.SetSecurity(logs[i])
		}
	})
	testutil.WaitFor(t, "n1 in sync", 60*time.Second, func() bool { return logs[0].syncs() == 1 })
	nodes[0].node.PutBan("kept", []byte("k"))
	nodes[0].node.PutBan("gone", []byte("g"))
	nodes[0].node.LiftBan("gone")
	nodes[0].node.PutFile("passwd", []byte("u:x"))
	// Revocation lists: one per issuer and node, a later one of the same
	// node replacing the earlier, those of two nodes adding up.
	for _, put := range []struct {
		i            int
		issuer, list string
	}{{0, "iss1", "list-a"}, {0, "iss1", "list-b"}, {1, "iss1", "list-c"}, {1, "iss2", "list-d"}} {
		if err := nodes[put.i].node.PutRevocations(put.issuer, []byte(put.list)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].node.PutRevocations("iss.1", []byte("x")); err == nil {
		t.Error("an issuer with a dot was accepted")
	}
	if err := nodes[0].node.PutRevocations("iss1", make([]byte, MaxRevocationList+1)); err == nil {
		t.Error("a revocation list beyond the maximum was accepted")
	}
	testutil.WaitFor(t, "n2 saw the lift", 30*time.Second, func() bool { return logs[1].has("lift n1 gone") })
	testutil.WaitFor(t, "n1's revocations on n2", 30*time.Second, func() bool { return logs[1].has("revocations n1 iss1 list-b") })
	testutil.WaitFor(t, "n2's revocations on n1", 30*time.Second, func() bool { return logs[0].has("revocations n2 iss2 list-d") })

	// A new Node in the same cluster, as a restarted node would be.
	late := &secLog{}
	startLateNode(t, nodes, late)
	testutil.WaitFor(t, "the late node in sync", 60*time.Second, func() bool { return late.syncs() == 1 })
	for _, want := range []string{"ban n1 kept k", "lift n1 gone", "file n1 passwd u:x", "synced bans=[gone kept] files=[passwd]",
		"revocations n1 iss1 list-b", "revocations n2 iss1 list-c", "revocations n2 iss2 list-d"} {
		if !late.has(want) {
			t.Errorf("the late node was not told %q:\n%s", want, late)
		}
	}
	// Every list was told before the node reported being in sync, and a
	// replaced list never.
	lines := strings.Split(late.String(), "\n")
	syncAt := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "synced ") })
	for i, l := range lines {
		if strings.HasPrefix(l, "revocations ") && i > syncAt {
			t.Errorf("%q told after the sync", l)
		}
	}
	if late.has("revocations n1 iss1 list-a") {
		t.Error("the late node was told of a replaced list")
	}
}

// startLateNode joins a fourth node, with its broker, to the cluster of
// nodes, with h as its Security.
func startLateNode(t *testing.T, nodes []*testNode, h Security) *Node {
	t.Helper()
	var peers []string
	for _, tn := range nodes {
		peers = append(peers, tn.node.RouteAddr())
	}
	log := slog.New(testLog(t)).With("node", "n4")
	nd, err := Start(Config{Name: "test", Node: "n4", Listen: "127.0.0.1:0", Peers: peers, Replicas: 3,
		StoreDir: filepath.Join(t.TempDir(), "n4"), Logger: log, setupAttempt: testSetupAttempt})
	if err != nil {
		t.Fatal(err)
	}
	return withBroker(t, nd, h, log)
}

// TestSecurityChangesWhileClusterUnreachable makes security changes on a
// node that lost its JetStream quorum (the two other nodes stopped): the
// changes of one ban replace each other in the queue, a change beyond the
// bound is refused with an error to its caller and counted, never an
// accepted one dropped; once a second node is back, it learns every
// accepted change, and never the refused one.
func TestSecurityChangesWhileClusterUnreachable(t *testing.T) {
	t.Parallel()
	logs := make([]*secLog, 3)
	nodes, dir, routes := startOwn(t, 3, func(i int, nd *Node) {
		logs[i] = &secLog{} // a start made again begins with empty logs
		nd.SetSecurity(logs[i])
		if i == 0 {
			nd.sec.writes = newPendingQueue[secKey, secRecord](4, false)
		}
	})
	for i, l := range logs {
		testutil.WaitFor(t, fmt.Sprintf("n%d in sync", i+1), 60*time.Second, func() bool { return l.syncs() == 1 })
	}
	stopNode(t, nodes[1])
	stopNode(t, nodes[2])
	n1 := nodes[0].node

	for _, id := range []string{"b1", "b2", "b3", "b4"} {
		if err := n1.PutBan(id, []byte("first "+id)); err != nil {
			t.Fatalf("ban %s: %v", id, err)
		}
	}
	// Changes of bans already waiting take no room.
	if err := n1.PutBan("b1", []byte("second b1")); err != nil {
		t.Fatalf("b1 changed again: %v", err)
	}
	if err := n1.LiftBan("b2"); err != nil {
		t.Fatalf("b2 lifted: %v", err)
	}
	if n1.SecurityRoom() {
		t.Fatal("room reported with 4 of 4 waiting")
	}
	// A fifth ban, and a file, are refused: the oldest is not dropped.
	for _, put := range []func() error{
		func() error { return n1.PutBan("b5", []byte("refused")) },
		func() error { return n1.PutFile("passwd", []byte("u:x")) },
	} {
		err := put()
		if !errors.Is(err, ErrSecurityBacklog) {
			t.Fatalf("a change beyond the bound: %v, want ErrSecurityBacklog", err)
		}
		if want := "cluster unreachable: 4 security changes pending; not applied cluster-wide"; err.Error() != want {
			t.Fatalf("error %q, want %q", err, want)
		}
	}
	if st := n1.Status(); st.SecurityPending != 4 || st.SecurityRefused != 2 {
		t.Fatalf("status: %d pending, %d refused; want 4 and 2", st.SecurityPending, st.SecurityRefused)
	}

	// n2 comes back: the quorum returns, n1 writes what waited, and n2
	// learns it from the buckets.
	back := &secLog{}
	restartNode(t, dir, routes, 1, back)
	testutil.WaitFor(t, "n1's changes written", 90*time.Second, func() bool { return n1.Status().SecurityPending == 0 })
	testutil.WaitFor(t, "n2 in sync", 60*time.Second, func() bool { return back.syncs() >= 1 })
	testutil.CheckFor(t, 30*time.Second, func() error {
		for _, want := range []string{"ban n1 b1 second b1", "lift n1 b2", "ban n1 b3 first b3", "ban n1 b4 first b4"} {
			if !back.has(want) {
				return fmt.Errorf("n2 was not told %q:\n%s", want, back)
			}
		}
		return nil
	})
	for _, never := range []string{"b5", "passwd"} {
		if strings.Contains(back.String(), never) {
			t.Errorf("n2 was told of %q:\n%s", never, back)
		}
	}
	// A replaced change is not written, unless its write was already on
	// its way when the quorum went (the bucket then gets it late, before
	// its replacement): n2 may be told of it, but the last word is the
	// replacement's.
	for id, want := range map[string]string{"b1": "ban n1 b1 second b1", "b2": "lift n1 b2"} {
		if last := back.last(" n1 " + id); last != want {
			t.Errorf("n2's last word on %s: %q, want %q:\n%s", id, last, want, back)
		}
	}
	// There is room again.
	if err := n1.PutBan("b5", []byte("now")); err != nil {
		t.Fatalf("b5 after the quorum returned: %v", err)
	}
	testutil.WaitFor(t, "b5 on n2", 30*time.Second, func() bool { return back.has("ban n1 b5 now") })
}

// restartNode starts node i of the cluster of routes again, on its store
// in dir, with its broker, and h as its Security.
func restartNode(t *testing.T, dir string, routes []string, i int, h Security) *Node {
	t.Helper()
	name := fmt.Sprintf("n%d", i+1)
	log := slog.New(testLog(t)).With("node", name)
	nd := startAgain(t, Config{Name: "test", Node: name, Listen: routes[i], Peers: routes, StoreDir: filepath.Join(dir, name),
		Logger: log, HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, setupAttempt: testSetupAttempt})
	return withBroker(t, nd, h, log)
}

// withBroker gives the started node nd a broker and h as its Security;
// both stop when the test ends.
func withBroker(t *testing.T, nd *Node, h Security, log *slog.Logger) *Node {
	t.Helper()
	srv, err := broker.New(broker.Config{Cluster: nd, Authorizer: broker.AllowAll, AllowAnonymous: true, Logger: log})
	if err != nil {
		nd.Close()
		t.Fatal(err)
	}
	nd.SetSecurity(h)
	nd.Attach(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		nd.Close()
	})
	return nd
}

// storedLog is a secLog that is also told of this node's stored files
// and lifts.
type storedLog struct{ *secLog }

func (l storedLog) FileStored(name string, data []byte) { l.add("stored " + name + " " + string(data)) }
func (l storedLog) LiftStored(id string)                { l.add("lift stored " + id) }

// TestSecurityWaitingChangeMeetsNewer: n1's change of a shared file waits
// (its writes fail, as while the cluster is unreachable), and n2 changes
// the same file after it. n1 drops its older change and applies n2's, so
// every node ends with n2's version. Before, n1 applied n2's and then
// wrote its own older one over it, which n2 and n3 applied while n1 kept
// n2's. Then n1 changes the file again while its writes fail: that change
// is newer than the bucket's, so n1's watch, started again, does not
// apply the bucket's older version, and once n1's writes succeed its
// change reaches every node and n1 is told it is stored.
func TestSecurityWaitingChangeMeetsNewer(t *testing.T) {
	logs := []*secLog{{}, {}, {}}
	nodes := startCluster(t, 3, func(i int, nd *Node) {
		if i == 0 {
			nd.SetSecurity(storedLog{logs[i]})
		} else {
			nd.SetSecurity(logs[i])
		}
	})
	for i, l := range logs {
		testutil.WaitFor(t, fmt.Sprintf("n%d in sync", i+1), 60*time.Second, func() bool { return l.syncs() == 1 })
	}
	n1, n2 := nodes[0].node, nodes[1].node
	var tries atomic.Int32
	fail := func(string) error {
		tries.Add(1)
		return context.DeadlineExceeded
	}
	n1.sec.failWrite.Store(&fail)
	if err := n1.PutFile("acl", []byte("n1-old")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n1's failed write", 30*time.Second, func() bool { return tries.Load() > 0 })
	if err := n2.PutFile("acl", []byte("n2-newer")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n2's change on n1", 30*time.Second, func() bool { return logs[0].has("file n2 acl n2-newer") })
	if p := n1.Status().SecurityPending; p != 0 {
		t.Fatalf("n1's older change still waits (%d pending)", p)
	}
	n1.sec.failWrite.Store(nil)
	if err := n1.PutBan("mark", []byte("after")); err != nil { // written once the file's would have been
		t.Fatal(err)
	}
	for i, l := range logs[1:] {
		testutil.WaitFor(t, fmt.Sprintf("n1's next change on n%d", i+2), 30*time.Second, func() bool { return l.has("ban n1 mark after") })
		if l.has("file n1 acl n1-old") {
			t.Errorf("n%d was told of n1's older change:\n%s", i+2, l)
		}
	}
	if !logs[2].has("file n2 acl n2-newer") {
		t.Errorf("n3 was not told of n2's change:\n%s", logs[2])
	}
	if logs[0].has("stored acl n1-old") {
		t.Errorf("n1 was told its older change was stored:\n%s", logs[0])
	}

	// n1's newer change, waiting, meets the bucket's older version when
	// n1's file watch starts again.
	n1.sec.failWrite.Store(&fail)
	if err := n1.PutFile("acl", []byte("n1-latest")); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(logs[0].String(), "file n2 acl n2-newer")
	n1.sec.mu.Lock()
	w := n1.sec.watchers["shared file"]
	n1.sec.mu.Unlock()
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n1's file watch started again", 30*time.Second, func() bool {
		n1.sec.mu.Lock()
		defer n1.sec.mu.Unlock()
		return n1.sec.watchers["shared file"] != w
	})
	if err := n2.PutBan("mark2", []byte("x")); err != nil { // delivered after the replay
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n2's ban on n1", 30*time.Second, func() bool { return logs[0].has("ban n2 mark2 x") })
	if after := strings.Count(logs[0].String(), "file n2 acl n2-newer"); after != before {
		t.Errorf("n1 applied the bucket's older version over its waiting change (%d times, %d before)", after, before)
	}
	n1.sec.failWrite.Store(nil)
	for i, l := range logs[1:] {
		testutil.WaitFor(t, fmt.Sprintf("n1's latest change on n%d", i+2), 30*time.Second, func() bool { return l.has("file n1 acl n1-latest") })
	}
	testutil.WaitFor(t, "n1 told its change is stored", 30*time.Second, func() bool { return logs[0].has("stored acl n1-latest") })

	// A lift, once stored, is reported too.
	if err := n1.LiftBan("mark"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n1 told its lift is stored", 30*time.Second, func() bool { return logs[0].has("lift stored mark") })
}
