package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/authn/passwd"
	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

// inprocNode is one node of a cluster served in this process.
type inprocNode struct {
	name       string
	plan       *servePlan
	logs       *testutil.Buffer
	dir, data  string
	cfgFile    string
	plain, tls string // listener addresses
	stop       func() // stops serving; the test's end does too
}

// copyTree copies the directory src to dst, keeping file modes.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, fi.Mode().Perm())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// auditHas reports whether the audit log at path holds an entry of typ
// with every field of want (string values).
func auditHas(path, typ string, want map[string]string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(data)) {
		if !strings.HasSuffix(line, "\n") {
			break // being written
		}
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil || e.Type != typ {
			continue
		}
		ok := true
		for k, v := range want {
			f, has := e.Get(k)
			ok = ok && has && fmt.Sprint(f.Value()) == v
		}
		if ok {
			return true
		}
	}
	return false
}

const aclV1 = "topic readwrite plant/#\ntopic readwrite secret/#\nuser alice\ntopic readwrite #\n"

// startInprocCluster serves three nodes in this process, each with a plain
// listener (anonymous clients and a password file), a TLS listener of the
// built-in CA (one CA, copied to every node, as an operator shares it), an
// acl_file and a cluster section with plain loopback routes.
func startInprocCluster(t *testing.T) ([]*inprocNode, *pki.CA, string) {
	t.Helper()
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	ca, _, err := pki.OpenOrInit(caDir, pki.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Issued before the CA is copied to the nodes: every copy knows it.
	dev, err := ca.IssueDevice("sensor-9", nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.WriteFiles(filepath.Join(base, "sensor-9")); err != nil {
		t.Fatal(err)
	}
	nodes, _ := startInprocNodes(t, base, caDir)
	return nodes, ca, filepath.Join(base, "sensor-9")
}

// startInprocNodes starts three nodes under base, each with a copy of the
// CA in caDir, and waits until all are ready; routes are their route
// ports.
func startInprocNodes(t *testing.T, base, caDir string) (nodes []*inprocNode, routes []int) {
	t.Helper()
	routes = []int{testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)}
	for i := range 3 {
		n := newInprocNode(t, base, caDir, i, routes)
		n.start(t)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.waitReady(t)
	}
	return nodes, routes
}

// newInprocNode writes the directory and configuration of node i+1 of the
// cluster of routes under base, with a copy of the CA in caDir.
func newInprocNode(t *testing.T, base, caDir string, i int, routes []int) *inprocNode {
	t.Helper()
	var peers []string
	for _, r := range routes {
		peers = append(peers, fmt.Sprintf("%q", "127.0.0.1:"+strconv.Itoa(r)))
	}
	n := &inprocNode{name: fmt.Sprintf("node%d", i+1)}
	n.dir = filepath.Join(base, n.name)
	n.data = filepath.Join(n.dir, "data")
	copyTree(t, caDir, filepath.Join(n.data, "ca"))
	pw := filepath.Join(n.dir, "passwd")
	e, err := passwd.Edit(pw, true)
	if err == nil {
		err = e.Set("alice", []byte("alice-secret-1"))
	}
	if err == nil {
		err = e.Write()
	}
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(n.dir, "acl.conf"), aclV1)
	n.cfgFile = filepath.Join(n.dir, "moat.yaml")
	writeFile(t, n.cfgFile, fmt.Sprintf(`data_dir: %s
listeners:
  - name: plain
    address: "127.0.0.1:0"
    transport: tcp
    allow_anonymous: true
    auth:
      - {type: password_file, path: %s}
  - name: tls
    address: "127.0.0.1:0"
    transport: tls
    tls: {identity: {username_from: cn}}
acl:
  acl_file: %s
cluster:
  name: sec
  node: %s
  listen: "127.0.0.1:%d"
  peers: [%s]
`, n.data, pw, filepath.Join(n.dir, "acl.conf"), n.name, routes[i], strings.Join(peers, ", ")))
	return n
}

// start serves the node until the test ends or stop is called; its
// log starts empty.
func (n *inprocNode) start(t *testing.T) {
	t.Helper()
	var logs *testutil.Buffer
	var cfg *config.Config
	var err error
	for attempt := 0; ; attempt++ {
		cfg, err = config.Load(n.cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		logs = &testutil.Buffer{}
		n.logs = logs
		n.plan, err = buildPlan(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), false)
		if err != nil && attempt < 2 && strings.Contains(err.Error(), "did not start within") {
			// The route port was taken while the node was stopped:
			// another test's node picked it as free. The node starts
			// on another one, which the others learn from its routes.
			t.Logf("%s: route port taken (%v); starting on another", n.name, err)
			n.moveRoutePort(t)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if cfg.Admin.Listen != "" {
		if n.plan.admin, err = planAdmin(n.plan, ""); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.plan.serve(ctx, Stdio{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}) }()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			if t.Failed() {
				t.Logf("%s log:\n%s", n.name, logs.String())
			}
		})
	}
	t.Cleanup(n.stop)
}

// backAfterCut starts again the stopped nodes of a cluster whose last
// node was cut off (the others stopped) and then stopped too: the
// others first, ready, then the last, so that it meets the cluster's
// state at its start.
func backAfterCut(t *testing.T, nodes []*inprocNode) {
	t.Helper()
	others, last := nodes[:len(nodes)-1], nodes[len(nodes)-1]
	for _, n := range others {
		n.start(t)
	}
	for _, n := range others {
		n.waitReady(t)
	}
	last.start(t)
	last.waitReady(t)
}

// moveRoutePort gives the node a free route port in its configuration.
func (n *inprocNode) moveRoutePort(t *testing.T) {
	t.Helper()
	if _, ok := moveRouteListen(t, n.cfgFile); !ok {
		t.Fatalf("%s: no route listen line in %s", n.name, n.cfgFile)
	}
}

// routeListenLine is the cluster.listen line of the tests' node
// configurations.
var routeListenLine = regexp.MustCompile(`(?m)^  listen: "127\.0\.0\.1:([0-9]+)"$`)

// moveRouteListen gives the node configured in cfgFile a free route
// port and returns the one it had; ok is false when the file has no
// route listen line. The other nodes learn the new port from the routes
// the node opens to them (their peers keep naming the old one, whose
// refused routes they log).
func moveRouteListen(t *testing.T, cfgFile string) (old string, ok bool) {
	t.Helper()
	data, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	m := routeListenLine.FindSubmatch(data)
	if m == nil {
		return "", false
	}
	writeFile(t, cfgFile, routeListenLine.ReplaceAllString(string(data), fmt.Sprintf(`  listen: "127.0.0.1:%d"`, testutil.FreePort(t))))
	return string(m[1]), true
}

// waitReady waits until the node's listeners are ready and its security
// state is in sync with the cluster's.
func (n *inprocNode) waitReady(t *testing.T) {
	t.Helper()
	testutil.CheckFor(t, 60*time.Second, func() error {
		a := logAddrs(n.logs.String(), "serve: listener ready", "address")
		if len(a) < 2 || !strings.Contains(n.logs.String(), "cluster: security state in sync") {
			return fmt.Errorf("%s not ready", n.name)
		}
		n.plain, n.tls = a[0], a[1]
		return nil
	})
}

func (n *inprocNode) auditFile() string { return filepath.Join(n.data, audit.DefaultFile) }

// removeUser removes user from the password file path, as `moat passwd
// -D` does.
func removeUser(t *testing.T, path, user string) {
	t.Helper()
	e, err := passwd.Edit(path, false)
	if err == nil {
		err = e.Delete(user)
	}
	if err == nil {
		err = e.Write()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func dialNode(t *testing.T, addr string, cfg client.Config) (*client.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cfg.TLSConfig != nil {
		cfg.Servers = []string{"tls://" + addr}
	} else {
		cfg.Servers = []string{"tcp://" + addr}
	}
	if cfg.Version == 0 {
		cfg.Version = client.V5
	}
	cfg.CleanStart = true
	c, err := client.Dial(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// waitGone waits until c's connection ends.
func waitGone(t *testing.T, c *client.Client, what string) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the client is still connected", what)
	}
}

// TestClusterSecurityInProcess runs three nodes in this process and
// checks that security state is cluster state: a ban added on one node
// disconnects and refuses its client on every node and is recorded in each
// node's audit log naming the node it came from; a ban removed on another
// node is lifted everywhere; an acl_file changed on one node is applied on
// every node; a password removed on one node disconnects its user on
// another; a certificate revoked in one node's copy of the CA disconnects
// its device on another node, whose copy of the CA then refuses it too.
func TestClusterSecurityInProcess(t *testing.T) {
	t.Parallel()
	nodes, ca, devPrefix := startInprocCluster(t)

	t.Run("ban", func(t *testing.T) {
		victim, err := dialNode(t, nodes[2].plain, client.Config{ClientID: "evil-1"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := nodes[0].plan.defense.g.AddBan(guard.Ban{Kind: guard.KindClientID, Value: "evil-1", Reason: "test"})
		if err != nil {
			t.Fatal(err)
		}
		waitGone(t, victim, "a client banned on node1, connected to node3")
		var re *client.ReasonError
		if err := victim.Err(); !errors.As(err, &re) || re.Code != 0x98 {
			t.Errorf("the banned client ended with %v, want DISCONNECT 0x98 (administrative action)", err)
		}
		testutil.CheckFor(t, 30*time.Second, func() error {
			c, err := dialNode(t, nodes[1].plain, client.Config{ClientID: "evil-1"})
			if err == nil {
				c.Close()
				return errors.New("the banned client ID connected to node2")
			}
			return nil
		})
		for i, n := range nodes[1:] {
			testutil.WaitFor(t, fmt.Sprintf("ban.add naming node1 in node%d's audit log", i+2), 30*time.Second, func() bool {
				return auditHas(n.auditFile(), audit.TypeBanAdd, map[string]string{"ban": b.ID, "origin_node": "node1"})
			})
		}
		if !auditHas(nodes[0].auditFile(), audit.TypeBanAdd, map[string]string{"ban": b.ID, "origin_node": "node1"}) {
			t.Error("node1's audit log does not name itself as the ban's origin")
		}
		// Lifted on node2: gone everywhere.
		if _, err := nodes[1].plan.defense.g.RemoveBan(b.ID); err != nil {
			t.Fatal(err)
		}
		for i, n := range nodes {
			testutil.WaitFor(t, fmt.Sprintf("the ban lifted on node%d", i+1), 30*time.Second, func() bool {
				return len(n.plan.defense.g.Bans()) == 0
			})
		}
		testutil.WaitFor(t, "ban.remove naming node2 in node3's audit log", 30*time.Second, func() bool {
			return auditHas(nodes[2].auditFile(), audit.TypeBanRemove, map[string]string{"ban": b.ID, "origin_node": "node2"})
		})
		if _, err := dialNode(t, nodes[2].plain, client.Config{ClientID: "evil-1"}); err != nil {
			t.Fatalf("the client whose ban was lifted cannot connect: %v", err)
		}
	})

	t.Run("acl", func(t *testing.T) {
		anon := func(n *inprocNode, topic string) bool {
			ps := n.plan.access.byLn["plain"]
			return ps.holder.Decide(authz.Request{Subject: &authz.Subject{Anonymous: true, ClientID: "x", Listener: "plain"},
				Action: authz.Publish, Topic: topic}).Allow
		}
		for i, n := range nodes {
			if !anon(n, "secret/x") {
				t.Fatalf("node%d denies secret/x before the change", i+1)
			}
		}
		v2 := "topic readwrite plant/#\nuser alice\ntopic readwrite #\n"
		writeFile(t, filepath.Join(nodes[0].dir, "acl.conf"), v2)
		for i, n := range nodes {
			testutil.WaitFor(t, fmt.Sprintf("the changed acl_file in force on node%d", i+1), 30*time.Second, func() bool {
				return !anon(n, "secret/x") && anon(n, "plant/y")
			})
		}
		for i, n := range nodes[1:] {
			if data, _ := os.ReadFile(filepath.Join(n.dir, "acl.conf")); string(data) != v2 {
				t.Errorf("node%d's acl.conf: %q", i+2, data)
			}
			testutil.WaitFor(t, fmt.Sprintf("config.reload naming node1 in node%d's audit log", i+2), 30*time.Second, func() bool {
				return auditHas(n.auditFile(), audit.TypeConfigReload, map[string]string{"origin_node": "node1", "result": "applied"})
			})
		}
		// A version that does not load on node2 is refused there, and
		// never sent.
		writeFile(t, filepath.Join(nodes[1].dir, "acl.conf"), "topic bogus-access plant/#\n")
		time.Sleep(3 * time.Second) // several checks of the file
		if data, _ := os.ReadFile(filepath.Join(nodes[2].dir, "acl.conf")); string(data) != v2 {
			t.Errorf("a broken acl_file reached node3: %q", data)
		}
	})

	t.Run("password", func(t *testing.T) {
		alice, err := dialNode(t, nodes[2].plain, client.Config{ClientID: "alice-1", Username: "alice", Password: client.NewSecret([]byte("alice-secret-1"))})
		if err != nil {
			t.Fatal(err)
		}
		removeUser(t, filepath.Join(nodes[0].dir, "passwd"), "alice")
		waitGone(t, alice, "a user whose password was removed on node1, connected to node3")
		testutil.WaitFor(t, "node3's password file without alice", 30*time.Second, func() bool {
			data, _ := os.ReadFile(filepath.Join(nodes[2].dir, "passwd"))
			return !bytes.Contains(data, []byte("alice:"))
		})
		// node2 learns of the file through its own watch of the bucket,
		// which may run behind node3's: it refuses alice once it has
		// written and loaded the file, within seconds.
		testutil.WaitFor(t, "node2 refusing a user removed on node1", 30*time.Second, func() bool {
			c, err := dialNode(t, nodes[1].plain, client.Config{ClientID: "alice-2", Username: "alice", Password: client.NewSecret([]byte("alice-secret-1"))})
			if err == nil {
				c.Close()
				return false
			}
			return true
		})
	})

	t.Run("revocation", func(t *testing.T) {
		pair, err := tls.LoadX509KeyPair(devPrefix+".pem", devPrefix+".key")
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca.Root())
		tc := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "127.0.0.1"}
		dev, err := dialNode(t, nodes[2].tls, client.Config{ClientID: "sensor-9", TLSConfig: tc})
		if err != nil {
			t.Fatal(err)
		}
		// `moat ca revoke --dir node1/data/ca`: node1's copy of the CA.
		ca1, err := pki.Open(filepath.Join(nodes[0].data, "ca"), pki.Config{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		serial := leaf.SerialNumber.Text(16)
		if _, err := ca1.Revoke(serial, 0); err != nil {
			t.Fatal(err)
		}
		waitGone(t, dev, "a device revoked on node1, connected to node3")
		testutil.WaitFor(t, "access.lost and ca.revoke in node3's audit log", 30*time.Second, func() bool {
			return auditHas(nodes[2].auditFile(), audit.TypeAccessLost, map[string]string{"trigger": "revocation", "client_id": "sensor-9"}) &&
				auditHas(nodes[2].auditFile(), audit.TypeCARevoke, map[string]string{"serial": serial, "origin_node": "node1"})
		})
		// node3's copy of the CA revoked it too: refused from now on.
		testutil.CheckFor(t, 30*time.Second, func() error {
			if _, err := dialNode(t, nodes[2].tls, client.Config{ClientID: "sensor-9b", TLSConfig: tc}); err == nil {
				return errors.New("the revoked device still connects to node3")
			}
			return nil
		})
	})
}

// deviceTLS issues a device certificate from ca and returns a client TLS
// configuration presenting it, and its serial (hex).
func deviceTLS(t *testing.T, ca *pki.CA, name string) (*tls.Config, string) {
	t.Helper()
	dev, err := ca.IssueDevice(name, nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(t.TempDir(), name)
	if err := dev.WriteFiles(prefix); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(prefix+".pem", prefix+".key")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "127.0.0.1"}, leaf.SerialNumber.Text(16)
}

// TestClusterRevocationReachesStoppedAndLateNodes checks that revocations
// are cluster state, not only events: a certificate revoked on node1
// while node2 is stopped is refused by node2 as soon as it is back, and by
// a fourth node started only afterwards, in real TLS handshakes. The
// certificates are issued from node1's copy of the CA after it was copied,
// so the other copies do not know them and cannot record the revocation:
// the nodes refuse them from the cluster's revocation lists.
func TestClusterRevocationReachesStoppedAndLateNodes(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	if _, _, err := pki.OpenOrInit(caDir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes, routes := startInprocNodes(t, base, caDir)
	// `moat ca issue --dir node1/data/ca`, twice.
	ca1, err := pki.Open(filepath.Join(nodes[0].data, "ca"), pki.Config{})
	if err != nil {
		t.Fatal(err)
	}
	revokedTLS, serial := deviceTLS(t, ca1, "sensor-r")
	keptTLS, _ := deviceTLS(t, ca1, "sensor-k")

	dev, err := dialNode(t, nodes[1].tls, client.Config{ClientID: "sensor-r", TLSConfig: revokedTLS})
	if err != nil {
		t.Fatalf("the device before its revocation, on node2: %v", err)
	}
	nodes[1].stop()
	waitGone(t, dev, "node2 stopped")

	if _, err := ca1.Revoke(serial, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	// node3 was up: it refuses the device within seconds.
	testutil.CheckFor(t, 30*time.Second, func() error {
		if _, err := dialNode(t, nodes[2].tls, client.Config{ClientID: "sensor-r", TLSConfig: revokedTLS}); err == nil {
			return errors.New("the revoked device still connects to node3")
		}
		return nil
	})
	testutil.WaitFor(t, "node1's revocation list stored in the cluster", 30*time.Second, func() bool {
		return nodes[0].plan.cluster.Status().SecurityPending == 0
	})

	// node2 comes back and refuses the device within seconds (its first
	// reading of the bucket may not have the latest list yet; it reads
	// them again every few seconds).
	nodes[1].start(t)
	nodes[1].waitReady(t)
	testutil.CheckFor(t, 30*time.Second, func() error {
		if _, err := dialNode(t, nodes[1].tls, client.Config{ClientID: "sensor-r", TLSConfig: revokedTLS}); err == nil {
			return errors.New("node2, stopped during the revocation, accepts the revoked device after its restart")
		}
		return nil
	})
	if !strings.Contains(nodes[1].logs.String(), "revoked on node node1") {
		t.Errorf("node2 did not log the cluster's revocation:\n%s", nodes[1].logs.String())
	}
	if _, err := dialNode(t, nodes[1].tls, client.Config{ClientID: "sensor-k", TLSConfig: keptTLS}); err != nil {
		t.Fatalf("node2 refused a device that is not revoked: %v", err)
	}

	// A fourth node, started now for the first time.
	routes4 := append(slices.Clone(routes), testutil.FreePort(t))
	late := newInprocNode(t, base, caDir, 3, routes4)
	late.start(t)
	late.waitReady(t)
	testutil.CheckFor(t, 30*time.Second, func() error {
		if _, err := dialNode(t, late.tls, client.Config{ClientID: "sensor-r", TLSConfig: revokedTLS}); err == nil {
			return errors.New("a node started after the revocation accepts the revoked device")
		}
		return nil
	})
	if _, err := dialNode(t, late.tls, client.Config{ClientID: "sensor-k", TLSConfig: keptTLS}); err != nil {
		t.Fatalf("the late node refused a device that is not revoked: %v", err)
	}
}

// TestClusterBanThreeProcesses bans a client ID with `moat ban add` on the
// first of three `moat serve` processes: the mosquitto_sub of that client
// on the third node is disconnected, mosquitto_pub with it is refused on
// the second, both record the ban naming node1, and it is in their ban
// lists; `moat ban remove` on node1 lifts it everywhere.
func TestClusterBanThreeProcesses(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, clusterSetup{extra: allowAllACL})
	for i, p := range mc.procs {
		testutil.WaitFor(t, fmt.Sprintf("node%d's security state in sync", i+1), 60*time.Second, func() bool {
			return strings.Contains(p.logs.String(), "cluster: security state in sync")
		})
	}
	sub := exec.Command("mosquitto_sub", append(mc.host(2), "-V", "5", "-i", "intruder", "-q", "1", "-t", "plant/#", "-v")...)
	subOut := &testutil.Buffer{}
	sub.Stdout, sub.Stderr = subOut, subOut
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Wait() }()
	t.Cleanup(func() { sub.Process.Kill(); <-subDone })
	pub := func(node int, id string) error {
		o, err := run(t, 10*time.Second, "mosquitto_pub", append(mc.host(node), "-V", "5", "-i", id, "-q", "1", "-t", "plant/x", "-m", "hi")...)
		if err != nil {
			return fmt.Errorf("%v: %s", err, o)
		}
		return nil
	}
	// The subscriber is connected: a message reaches it.
	testutil.CheckFor(t, 30*time.Second, func() error {
		if err := pub(2, "probe"); err != nil {
			return err
		}
		if !strings.Contains(subOut.String(), "plant/x hi") {
			return errors.New("the subscriber got nothing yet")
		}
		return nil
	})

	out := moatCmd(t, mc.dirs[0], "ban", "add", "--data", "data", "--client-id", "intruder", "--reason", "cluster test")
	id := strings.Fields(out)[1] // "ban ID added: ..."
	select {
	case <-subDone:
		subDone <- nil
	case <-time.After(30 * time.Second):
		t.Fatalf("mosquitto_sub of the banned client ID on node3 still runs:\n%s", subOut.String())
	}
	if err := pub(1, "intruder"); err == nil {
		t.Fatal("mosquitto_pub with the banned client ID was accepted by node2")
	}
	for _, i := range []int{1, 2} {
		audit := filepath.Join(mc.dirs[i], "data", "audit.log")
		testutil.WaitFor(t, fmt.Sprintf("ban.add naming node1 in node%d's audit log", i+1), 30*time.Second, func() bool {
			return auditHas(audit, "ban.add", map[string]string{"ban": id, "origin_node": "node1", "value": "intruder"})
		})
		testutil.CheckFor(t, 30*time.Second, func() error {
			if o := moatCmd(t, mc.dirs[i], "ban", "list", "--data", "data"); !strings.Contains(o, id) {
				return fmt.Errorf("node%d's ban list: %s", i+1, o)
			}
			return nil
		})
	}

	moatCmd(t, mc.dirs[0], "ban", "remove", "--data", "data", id)
	for _, node := range []int{1, 2} {
		testutil.CheckFor(t, 30*time.Second, func() error { return pub(node, "intruder") })
	}
	testutil.WaitFor(t, "ban.remove naming node1 in node3's audit log", 30*time.Second, func() bool {
		return auditHas(filepath.Join(mc.dirs[2], "data", "audit.log"), "ban.remove", map[string]string{"ban": id, "origin_node": "node1"})
	})
}

// TestClusterACLThreeProcesses changes the acl_file of the first of three
// `moat serve` processes: the second and third write and load it, so a
// mosquitto_sub on the third loses a topic the new policy no longer
// grants, and its acl.conf is node 1's.
func TestClusterACLThreeProcesses(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, clusterSetup{extra: "acl:\n  acl_file: acl.conf\n", prepare: func(_ int, dir string) {
		writeFile(t, filepath.Join(dir, "acl.conf"), "topic readwrite plant/#\ntopic readwrite secret/#\n")
	}})
	for i, p := range mc.procs {
		testutil.WaitFor(t, fmt.Sprintf("node%d's security state in sync", i+1), 60*time.Second, func() bool {
			return strings.Contains(p.logs.String(), "cluster: security state in sync")
		})
	}
	subscribeOnce := func(node int, topic string) (string, error) {
		return run(t, 10*time.Second, "mosquitto_sub", append(mc.host(node), "-V", "5", "-q", "1", "-t", topic, "-C", "1", "-W", "2")...)
	}
	// Granted: the subscription is accepted and times out waiting.
	if o, _ := subscribeOnce(2, "secret/#"); strings.Contains(o, "denied") {
		t.Fatalf("secret/# denied before the change: %s", o)
	}
	const v2 = "topic readwrite plant/#\n"
	writeFile(t, filepath.Join(mc.dirs[0], "acl.conf"), v2)
	for _, i := range []int{1, 2} {
		testutil.CheckFor(t, 30*time.Second, func() error {
			if data, _ := os.ReadFile(filepath.Join(mc.dirs[i], "acl.conf")); string(data) != v2 {
				return fmt.Errorf("node%d's acl.conf: %q", i+1, data)
			}
			if o, _ := subscribeOnce(i, "secret/#"); !strings.Contains(o, "denied") {
				return fmt.Errorf("node%d still grants secret/#: %q", i+1, o)
			}
			return nil
		})
		if !auditHas(filepath.Join(mc.dirs[i], "data", "audit.log"), "config.reload", map[string]string{"origin_node": "node1", "result": "applied"}) {
			t.Errorf("node%d's audit log has no config.reload naming node1", i+1)
		}
	}
	if o, _ := subscribeOnce(1, "plant/#"); strings.Contains(o, "denied") {
		t.Fatalf("plant/# denied after the change: %s", o)
	}
}

// TestSecurityForgedClusterRevocationCutsNoOne plays a node that forges a
// revocation list: same issuer name as the fleet's CA, its own key,
// naming a live device. The device stays connected and may connect
// again; the admin listener is wired to the same check. A genuine list
// (signed by the CA's key, from another copy of the CA that issued the
// device after this node's copy was made) disconnects it.
func TestSecurityForgedClusterRevocationCutsNoOne(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	if _, _, err := pki.OpenOrInit(caDir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	routes := []int{testutil.FreePort(t), testutil.FreePort(t)}
	n := newInprocNode(t, base, caDir, 0, routes)
	cfg, err := os.ReadFile(n.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, n.cfgFile, string(cfg)+"admin:\n  listen: 127.0.0.1:0\n")
	peer := newInprocNode(t, base, caDir, 1, routes)
	n.start(t)
	peer.start(t)
	n.waitReady(t)
	peer.waitReady(t)
	// Another copy of the CA: this node's copy does not know what it
	// issues, so only the cluster's lists can revoke it here.
	otherDir := filepath.Join(base, "other-ca")
	copyTree(t, caDir, otherDir)
	other, err := pki.Open(otherDir, pki.Config{})
	if err != nil {
		t.Fatal(err)
	}
	devTLS, serial := deviceTLS(t, other, "sensor-f")
	whoami := adminWhoami(t, n, other)
	if code := whoami(devTLS); code != http.StatusUnauthorized {
		t.Fatalf("the admin API with a device certificate: %d; want 401 (no admin role)", code)
	}
	dev, err := dialNode(t, n.tls, client.Config{ClientID: "sensor-f", TLSConfig: devTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	// The forger's list: the CA's name, a key of its own.
	inter := other.Intermediate()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), RawSubject: inter.RawSubject, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sn, _ := new(big.Int).SetString(serial, 16)
	forgedDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1 << 40), ThisUpdate: time.Now(),
		NextUpdate: time.Now().Add(time.Hour), RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: sn, RevocationTime: time.Now()}}},
		fake, key)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := x509.ParseRevocationList(forgedDER)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(forged.RawIssuer, inter.RawSubject) {
		t.Fatal("the forged list does not name the CA")
	}
	n.plan.clusterSec.takeRevocations("node9", forged, "forged")
	select {
	case <-dev.Done():
		t.Fatal("a forged revocation list of another node disconnected a live device")
	default:
	}
	if !strings.Contains(n.logs.String(), "not signed by its issuer") {
		t.Errorf("the refusal of the forged list is not logged:\n%s", n.logs.String())
	}
	again, err := dialNode(t, n.tls, client.Config{ClientID: "sensor-f2", TLSConfig: devTLS})
	if err != nil {
		t.Fatalf("a forged revocation list refused the device's handshake: %v", err)
	}
	again.Close()
	if code := whoami(devTLS); code != http.StatusUnauthorized {
		t.Fatalf("the admin API after the forged list: %d; want 401 (a valid certificate without an admin role)", code)
	}

	// The genuine list.
	if _, err := other.Revoke(serial, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	crlDER, err := other.CRL()
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := x509.ParseRevocationList(crlDER)
	if err != nil {
		t.Fatal(err)
	}
	n.plan.clusterSec.takeRevocations("node8", genuine, "certificate revoked")
	waitGone(t, dev, "the genuine list")
	if _, err := dialNode(t, n.tls, client.Config{ClientID: "sensor-f3", TLSConfig: devTLS}); err == nil {
		t.Fatal("the device revoked by a genuine list still connects")
	}
	// The admin listener counts the cluster's list too: an operator's
	// certificate revoked on another node is refused.
	if code := whoami(devTLS); code != 0 {
		t.Fatalf("the admin API with a certificate revoked by the cluster's list: %d; want the handshake refused", code)
	}
}

// adminWhoami returns a function that asks node n's admin API who the
// holder of a client certificate is: the HTTP status, 0 when the TLS
// handshake failed.
func adminWhoami(t *testing.T, n *inprocNode, ca *pki.CA) func(*tls.Config) int {
	t.Helper()
	var addr string
	testutil.CheckFor(t, 30*time.Second, func() error {
		a := logAddrs(n.logs.String(), "admin: serving the API", "address")
		if len(a) == 0 {
			return errors.New("the admin API is not serving")
		}
		addr = a[0]
		return nil
	})
	return func(c *tls.Config) int {
		tc := c.Clone()
		tc.ServerName = ""
		tc.RootCAs = ca.Roots()
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + addr + "/api/v1/whoami")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
}

// TestClusterSharedFileKeptAcrossRestart: a node keeps the changes of its
// shared files that the cluster has not got yet when it restarts.
//
//   - node3, cut off (the two others stopped), removes alice from its
//     password file; the change waits for the cluster, and node3 stops
//     before the cluster is back. When all three run again, node3 keeps
//     its file and sends it: alice is refused on node1. Before, the
//     cluster's older file replaced node3's at start-up and alice was
//     back on node3 too.
//   - node3's acl_file edited while node3 is stopped, and node1's too:
//     both changed, the cluster's version wins on node3, which says so.
//   - An acl_file left alone while node3 was stopped takes the cluster's
//     newer version.
func TestClusterSharedFileKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	nodes, _, _ := startInprocCluster(t)
	n1, n3 := nodes[0], nodes[2]
	read := func(n *inprocNode, name string) string {
		data, _ := os.ReadFile(filepath.Join(n.dir, name))
		return string(data)
	}
	// Every node knows what it agreed with the cluster.
	for _, n := range nodes {
		testutil.WaitFor(t, n.name+"'s record of the shared files", 30*time.Second, func() bool {
			data, _ := os.ReadFile(filepath.Join(n.data, "cluster", sharedAgreedFile))
			return bytes.Contains(data, []byte(`"passwd"`)) && bytes.Contains(data, []byte(`"acl.conf"`))
		})
	}
	aliceOn := func(n *inprocNode) error {
		c, err := dialNode(t, n.plain, client.Config{ClientID: "alice-" + n.name, Username: "alice", Password: client.NewSecret([]byte("alice-secret-1"))})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := aliceOn(n1); err != nil {
		t.Fatalf("alice on node1 before the change: %v", err)
	}

	// node3 cut off: a password removed there waits for the cluster.
	nodes[0].stop()
	nodes[1].stop()
	removeUser(t, filepath.Join(n3.dir, "passwd"), "alice")
	removed := read(n3, "passwd")
	testutil.WaitFor(t, "node3's changed password file waiting for the cluster", 30*time.Second, func() bool {
		return n3.plan.cluster.Status().SecurityPending > 0
	})
	n3.stop()
	backAfterCut(t, nodes)
	for _, n := range nodes {
		testutil.WaitFor(t, n.name+"'s password file without alice", 30*time.Second, func() bool {
			return read(n, "passwd") == removed
		})
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		if aliceOn(n1) == nil {
			return errors.New("node1 still accepts alice, removed on node3 while it was cut off")
		}
		return nil
	})
	if !strings.Contains(n3.logs.String(), "shared file changed here since this node last agreed with the cluster") {
		t.Errorf("node3 did not say why it kept its file:\n%s", n3.logs.String())
	}
	testutil.WaitFor(t, "node3's change stored", 30*time.Second, func() bool {
		return n3.plan.cluster.Status().SecurityPending == 0
	})

	// Both changed while node3 was stopped: the cluster's wins.
	n3.stop()
	writeFile(t, filepath.Join(n3.dir, "acl.conf"), "topic readwrite mine/#\n")
	v3 := "topic readwrite plant/#\ntopic readwrite theirs/#\n"
	writeFile(t, filepath.Join(n1.dir, "acl.conf"), v3)
	testutil.WaitFor(t, "node1's acl_file reaching node2", 30*time.Second, func() bool { return read(nodes[1], "acl.conf") == v3 })
	n3.start(t)
	n3.waitReady(t)
	testutil.WaitFor(t, "node1's acl_file on node3", 30*time.Second, func() bool { return read(n3, "acl.conf") == v3 })
	if !strings.Contains(n3.logs.String(), "the cluster's version replaced this node's") {
		t.Errorf("node3 did not say that its change was replaced:\n%s", n3.logs.String())
	}

	// Left alone while node3 was stopped: the cluster's newer version.
	n3.stop()
	v4 := "topic readwrite plant/#\n"
	writeFile(t, filepath.Join(n1.dir, "acl.conf"), v4)
	testutil.WaitFor(t, "node1's acl_file reaching node2", 30*time.Second, func() bool { return read(nodes[1], "acl.conf") == v4 })
	n3.start(t)
	n3.waitReady(t)
	testutil.WaitFor(t, "node1's newer acl_file on node3", 30*time.Second, func() bool { return read(n3, "acl.conf") == v4 })
	time.Sleep(2 * time.Second) // checks of the files on every node
	for _, n := range nodes {
		if got := read(n, "acl.conf"); got != v4 {
			t.Errorf("%s's acl.conf: %q, want node1's %q", n.name, got, v4)
		}
	}
}

// TestClusterBanLiftKeptAcrossRestart: node3, cut off (the two others
// stopped), lifts a ban node1 added; the lift waits for the cluster, and
// node3 stops before the cluster is back. When all three run again, the
// ban stays lifted on node3 and is lifted on the others. Before, it came
// back on node3 from the cluster.
func TestClusterBanLiftKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	nodes, _, _ := startInprocCluster(t)
	n3 := nodes[2]
	b, err := nodes[0].plan.defense.g.AddBan(guard.Ban{Kind: guard.KindClientID, Value: "lifted-1", Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	banned := func(n *inprocNode) bool {
		return slices.ContainsFunc(n.plan.defense.g.Bans(), func(x guard.Ban) bool { return x.ID == b.ID })
	}
	testutil.WaitFor(t, "the ban on node3", 30*time.Second, func() bool { return banned(n3) })

	nodes[0].stop()
	nodes[1].stop()
	if _, err := n3.plan.defense.g.RemoveBan(b.ID); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "node3's lift waiting for the cluster", 30*time.Second, func() bool {
		return n3.plan.cluster.Status().SecurityPending > 0
	})
	if data, _ := os.ReadFile(filepath.Join(n3.data, "cluster", pendingLiftsFile)); !bytes.Contains(data, []byte(b.ID)) {
		t.Fatalf("node3's record of its lifts: %q", data)
	}
	n3.stop()
	backAfterCut(t, nodes)
	for _, n := range nodes {
		testutil.WaitFor(t, n.name+" without the ban", 30*time.Second, func() bool { return !banned(n) })
	}
	testutil.WaitFor(t, "node3's lift stored and forgotten", 30*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(n3.data, "cluster", pendingLiftsFile))
		return !bytes.Contains(data, []byte(b.ID))
	})
	if banned(n3) {
		t.Error("the ban came back on node3")
	}
	if !strings.Contains(n3.logs.String(), "a ban this node lifted before the cluster had the lift stays lifted") {
		t.Errorf("node3 did not say why the ban stays lifted:\n%s", n3.logs.String())
	}
}
