package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterStatusThreeProcesses runs three `moat serve` nodes, the first
// with its admin listener, and checks what operators see: `moat cluster
// status` (text and --json) lists the three nodes up with a client of the
// second node counted, the replication state of both buckets and exit
// status 0; the metrics carry moat_cluster_*; the dashboard's cluster page
// shows the nodes in headless Chromium (when installed); after a SIGKILL of
// the third node the status names it down and exits 2. A node without a
// cluster section makes the command exit 1.
func TestClusterStatusThreeProcesses(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub")
	var tokenFile, viewer string
	procs := startMoatCluster(t, clusterSetup{name: "plant-a", extra: allowAllACL,
		prepare: func(i int, dir string) {
			if i != 0 {
				return
			}
			// The first node has the admin listener.
			f, err := os.OpenFile(filepath.Join(dir, "moat.yaml"), os.O_APPEND|os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteString("admin: {listen: \"127.0.0.1:0\"}\n")
				err = errors.Join(err, f.Close())
			}
			if err != nil {
				t.Fatal(err)
			}
			viewer = createToken(t, dir, "ops", "viewer")
			tokenFile = filepath.Join(dir, "viewer.token")
			writeFile(t, tokenFile, viewer+"\n")
		}}).procs
	adminAddr := procs[0].logAddr(t, "admin: serving the API", "address")
	status := func(args ...string) (string, string, int) {
		return moat(t, append([]string{"cluster", "status", "--admin", adminAddr, "--token-file", tokenFile}, args...)...)
	}

	// A client of node 2, counted on node 1 through node 2's heartbeat.
	sub := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(procs[1].port(0)), "-i", "on-node2", "-t", "x/#")
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })

	var st cluster.Status
	testutil.CheckFor(t, 90*time.Second, func() error {
		out, errs, code := status("--json")
		if code != 0 {
			return fmt.Errorf("exit %d: %s %s", code, errs, out)
		}
		st = cluster.Status{}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		i := slices.IndexFunc(st.Nodes, func(n cluster.NodeInfo) bool { return n.Node == "node2" })
		if st.NodesUp != 3 || i < 0 || st.Nodes[i].Connections != 1 || st.Nodes[i].ClockOffsetMS == nil {
			return fmt.Errorf("%d nodes up, nodes %+v", st.NodesUp, st.Nodes)
		}
		// One machine, one clock: the offset is the heartbeat's trip.
		if o := *st.Nodes[i].ClockOffsetMS; o < -1000 || o > 1000 {
			return fmt.Errorf("node2's clock offset %d ms", o)
		}
		return nil
	})
	if st.Cluster != "plant-a" || st.Node != "node1" || !st.Healthy || st.MetaLeader == "" || len(st.Routes) != 2 {
		t.Errorf("status: %+v", st)
	}
	// Both buckets are streams of three copies (once the cluster made
	// them and the background poll read them), and node2's client's
	// claim reaches its bucket.
	testutil.CheckFor(t, 60*time.Second, func() error {
		out, _, _ := status("--json")
		var st cluster.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		for _, name := range []string{"KV_moat_retained", "KV_moat_clients"} {
			i := slices.IndexFunc(st.Streams, func(s cluster.StreamState) bool { return s.Name == name })
			if i < 0 || st.Streams[i].Replicas != 3 || len(st.Streams[i].Peers) != 3 {
				return fmt.Errorf("stream %s: %+v", name, st.Streams)
			}
			if name == "KV_moat_clients" && st.Streams[i].Messages != 1 {
				return fmt.Errorf("claims: %+v", st.Streams[i])
			}
		}
		return nil
	})
	out, errs, code := status()
	if code != 0 {
		t.Fatalf("text status: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("moat cluster status:\n%s", out)
	for _, want := range []string{"cluster plant-a, asked node node1: healthy, 3 of 3 nodes up", "node1 (this node)", "KV_moat_retained",
		"JetStream: meta leader"} {
		if !strings.Contains(out, want) {
			t.Errorf("text status lacks %q", want)
		}
	}
	if !regexpLine(out, `^node2\s+UP\s+1\s+1\s`) {
		t.Errorf("text status does not show node2 up with 1 connection and 1 session:\n%s", out)
	}

	// Metrics. A copy is current once it has caught up with its
	// leader: right after the claim's write, node3's copy of the claims
	// may still lag a record or two (seen once in a full run), so the
	// metrics are read until it is current.
	testutil.CheckFor(t, 30*time.Second, func() error {
		req, _ := http.NewRequest("GET", "http://"+adminAddr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+viewer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"moat_cluster_nodes 3", "moat_cluster_nodes_missing 0", `moat_cluster_node_connections{node="node2"} 1`,
			`moat_cluster_node_clock_offset_seconds{node="node2"}`,
			"moat_cluster_routes 2", "moat_cluster_healthy 1", `moat_cluster_replica_current{node="node3",stream="KV_moat_clients"} 1`} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("metrics lack %q", want)
			}
		}
		return nil
	})

	clusterDashboard(t, "http://"+adminAddr, viewer)

	// SIGKILL of node 3: node 1 reports it down, and the command exits 2.
	if err := procs[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 60*time.Second, func() error {
		out, errs, code := status()
		if code != 2 || !strings.Contains(out, "node node3 is down") || !regexpLine(out, `^node3\s+DOWN\s`) {
			return fmt.Errorf("exit %d:\n%s%s", code, out, errs)
		}
		return nil
	})

	// A node without a cluster.
	single := t.TempDir()
	writeFile(t, filepath.Join(single, "moat.yaml"), `data_dir: data
listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
admin: {listen: "127.0.0.1:0"}
`)
	tok := createToken(t, single, "ops", "viewer")
	sp := startMoat(t, single, "-c", "moat.yaml")
	// The token comes from $MOAT_ADMIN_TOKEN, set for the command's
	// process alone: this test runs beside others.
	cmd := exec.Command(moatBin, "cluster", "status", "--admin", sp.logAddr(t, "admin: serving the API", "address"))
	cmd.Env = append(os.Environ(), adminTokenEnv+"="+tok)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil && !errors.As(err, new(*exec.ExitError)) {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), "not in a cluster") {
		t.Errorf("single node: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
}

// regexpLine tells whether a line of s matches the expression.
func regexpLine(s, expr string) bool {
	for _, l := range strings.Split(s, "\n") {
		if ok, _ := regexp.MatchString(expr, l); ok {
			return true
		}
	}
	return false
}

// clusterDashboard opens the dashboard's cluster page in headless
// Chromium with a viewer token and checks the three nodes are listed up
// and both buckets have a leader.
func clusterDashboard(t *testing.T, base, token string) {
	t.Helper()
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Log("chromium not installed: the dashboard's cluster page is not checked (make test installs it)")
		return
	}
	shots := artifactsDir(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1400, 1000))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The browser starts under bctx; the steps run under a timeout of
	// their own, which must not be the browser's.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	ctx, cancelT := context.WithTimeout(bctx, 60*time.Second)
	defer cancelT()
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.CSS(`#nav a[href="#cluster"]`)),
		chromedp.Click(chromedp.CSS(`#nav a[href="#cluster"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#cl-nodes tr[data-node="node3"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#cl-streams tr[data-stream="KV_moat_clients"]`)))
	if err != nil {
		t.Fatalf("dashboard cluster page: %v", err)
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID(id)))
		if err != nil {
			t.Fatalf("dashboard: text of #%s: %v", id, err)
		}
		return s
	}
	// The page refreshes every 2 s; on a loaded machine a reading of the
	// streams' state may time out once (degraded, with the reason), so
	// the test waits for a healthy reading rather than taking the first.
	var nodes, streams, health string
	testutil.CheckFor(t, 30*time.Second, func() error {
		nodes, streams, health = text("cl-nodes"), text("cl-streams"), text("cl-health")
		if health != "healthy" {
			return fmt.Errorf("cluster page: health %q", health)
		}
		return nil
	})
	if buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(shots, "cluster.png"), buf, 0o644)
	}
	if health != "healthy" || strings.Count(nodes, "\tup\t") != 3 || !strings.Contains(nodes, "node1 (this node)") ||
		strings.Count(nodes, " ms\t") != 2 || strings.Contains(streams, "none") {
		t.Errorf("cluster page: health %q\nnodes %q\nstreams %q (screenshot in %s)", health, nodes, streams, shots)
	}
}

// TestOpenAPIClusterStatus: every field of the cluster status the admin
// API serves (cluster.Status, and the objects it lists) is documented in
// openapi.json's ClusterStatus schema, and nothing more.
func TestOpenAPIClusterStatus(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "admin", "openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	type schema struct {
		Ref        string            `json:"$ref"`
		Properties map[string]schema `json:"properties"`
		Items      *schema           `json:"items"`
	}
	var doc struct {
		Components struct {
			Schemas map[string]schema `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	var check func(path string, typ reflect.Type, s schema)
	check = func(path string, typ reflect.Type, s schema) {
		for s.Ref != "" {
			s = doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
		}
		for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Pointer {
			if typ.Kind() == reflect.Slice {
				if s.Items == nil {
					t.Errorf("%s: an array in Go, not in openapi.json", path)
					return
				}
				s = *s.Items
				for s.Ref != "" {
					s = doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
				}
			}
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[time.Time]() {
			return
		}
		seen := map[string]bool{}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			seen[name] = true
			p, ok := s.Properties[name]
			if !ok {
				t.Errorf("%s.%s is not documented in openapi.json", path, name)
				continue
			}
			check(path+"."+name, f.Type, p)
		}
		for name := range s.Properties {
			if !seen[name] {
				t.Errorf("openapi.json documents %s.%s, which the status does not carry", path, name)
			}
		}
	}
	cs, ok := doc.Components.Schemas["ClusterStatus"]
	if !ok {
		t.Fatal("openapi.json has no ClusterStatus schema")
	}
	check("ClusterStatus", reflect.TypeFor[cluster.Status](), cs)
}
