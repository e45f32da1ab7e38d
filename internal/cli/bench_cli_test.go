package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/bench"
	"github.com/moatmq/moat/internal/testutil"
)

// benchMain runs `moat bench args...` in-process.
func benchMain(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"bench"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	if code != 0 {
		t.Logf("moat bench %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
	return out.String(), code
}

func readBenchJSON(t *testing.T, path string) *bench.Result {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := bench.ReadResult(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBenchSmoke is the short run of `moat bench` that `make test` does:
// a real `moat serve` from a mosquitto.conf with a plain and a mutual-TLS
// listener (and Mosquitto with the same file when installed), every
// scenario shape for about a second, then `moat bench compare`.
func TestBenchSmoke(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	if _, code := benchMain(t, "certs", "--dir", pki); code != 0 {
		t.Fatal("certs failed")
	}
	conf := func(plain, mtls int) string {
		p := func(n string) string { return filepath.Join(pki, n) }
		return fmt.Sprintf(`per_listener_settings false
allow_anonymous true
persistence false
connection_messages false
user root
listener %d 127.0.0.1
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, plain, mtls, p("ca.pem"), p("server.pem"), p("server.key"))
	}
	m := startMoatOn(t, dir, 2, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "moat.conf"), conf(ports[0], ports[1]))
		return []string{"-c", "moat.conf", "--data", filepath.Join(dir, "data")}
	})
	plain, mtls := m.port(0), m.port(1)
	pid := fmt.Sprint(m.cmd.Process.Pid)
	results := filepath.Join(dir, "results")
	os.Mkdir(results, 0o700)
	tlsArgs := []string{"--cafile", filepath.Join(pki, "ca.pem"),
		"--client-ca", filepath.Join(pki, "ca.pem"), "--client-ca-key", filepath.Join(pki, "ca.key"), "--kex", "classical"}
	common := []string{"-d", "1s", "--drain", "3s", "--interval", "250ms", "--quiet", "--broker-pid", pid}
	cases := []struct {
		id       string
		tls      bool
		args     []string
		lossless bool
	}{
		{"p2p", true, []string{"p2p", "--pubs", "3", "--subs", "3", "-q", "1", "-r", "100"}, true},
		{"fanin-e2e", true, []string{"fanin", "--pubs", "5", "--subs", "1", "-q", "1", "-r", "50", "--encrypt"}, true},
		{"fanout", false, []string{"fanout", "--pubs", "1", "--subs", "5", "-r", "100"}, false},
		{"shared", false, []string{"shared", "--pubs", "2", "--subs", "2", "-q", "1", "-r", "100"}, true},
		{"storm", true, []string{"conn", "-n", "30", "--source-addrs", "2"}, false},
	}
	for _, c := range cases {
		t.Run(c.id, func(t *testing.T) {
			port := plain
			args := append([]string{}, c.args...)
			if c.tls {
				port = mtls
				args = append(args, tlsArgs...)
			}
			jsonFile := filepath.Join(results, c.id+".moat.json")
			args = append(args, common...)
			args = append(args, "--addr", fmt.Sprintf("127.0.0.1:%d", port), "--json", jsonFile,
				"--html", filepath.Join(results, c.id+".html"))
			out, code := benchMain(t, args...)
			if code != 0 {
				t.Fatalf("exit %d", code)
			}
			if !strings.Contains(out, "connections") {
				t.Errorf("no table in output:\n%s", out)
			}
			r := readBenchJSON(t, jsonFile)
			if r.Connect.SuccessRate != 1 || r.Broker == nil {
				t.Errorf("connect %+v broker %+v errors %v", r.Connect, r.Broker, r.Errors)
			}
			if r.Scenario != "conn" {
				if r.Messages.Delivered == 0 || r.Latency.Count == 0 {
					t.Errorf("nothing delivered: %+v", r.Messages)
				}
				if c.lossless && r.Messages.Lost != 0 {
					t.Errorf("QoS 1 lost %d messages", r.Messages.Lost)
				}
			}
			html, err := os.ReadFile(filepath.Join(results, c.id+".html"))
			if err != nil || !bytes.Contains(html, []byte("<svg")) {
				t.Errorf("HTML report missing charts (%v)", err)
			}
		})
	}

	if _, err := exec.LookPath("mosquitto"); err == nil {
		t.Run("mosquitto side by side", func(t *testing.T) {
			mq := testutil.StartMosquitto(t, 2, func(ports []int) string { return conf(ports[0], ports[1]) })
			args := append([]string{"p2p", "--pubs", "3", "--subs", "3", "-q", "1", "-r", "100",
				"--addr", mq.Addr(1), "--json", filepath.Join(results, "p2p.mosquitto.json")}, tlsArgs...)
			args = append(args, common[:len(common)-1]...)
			args = append(args, fmt.Sprint(mq.Pid()))
			if _, code := benchMain(t, args...); code != 0 {
				t.Fatalf("bench against mosquitto failed; mosquitto log:\n%s", mq.Log())
			}
			out, code := benchMain(t, "compare", results, "--target", "p2p:delivered_per_s>=0.1")
			if code != 0 || !strings.Contains(out, "| p2p | delivered msgs/s |") {
				t.Errorf("compare: exit %d\n%s", code, out)
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"p2p", "--pubs", "2", "--subs", "3"},
			{"conn", "-n", "1", "--kex", "nope"},
			{"conn", "-n", "1", "--client-ca", "x"},
			{"compare", dir + "/nothing-here"},
			{"nullfwd", "--listen", "0.0.0.0:1"},
		} {
			if _, code := benchMain(t, args...); code == 0 {
				t.Errorf("moat bench %v succeeded", args)
			}
		}
	})
}
