package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

// adminEnv is a running `moat serve --admin` with the built-in CA, one
// mutual-TLS listener and tokens for both roles.
type adminEnv struct {
	dir, data string
	mqtt      int
	base      string // https://127.0.0.1:PORT
	http      *http.Client
	viewer    string
	operator  string
	proc      *moatProc
}

// createToken runs `moat admin token create` and returns what it prints
// on stdout (the token alone).
func createToken(t *testing.T, dir, name, role string) string {
	t.Helper()
	cmd := exec.Command(moatBin, "admin", "token", "create", name, "--role", role, "--data", "data")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("moat admin token create: %v\n%s", err, stderr.String())
	}
	tok := strings.TrimSpace(string(out))
	if strings.Count(string(out), "\n") != 1 || !strings.HasPrefix(tok, "moat_") {
		t.Fatalf("token create printed %q; want the token alone on one line", out)
	}
	return tok
}

// startAdminEnv starts moat serve with an admin listener; extra is
// appended to its configuration.
func startAdminEnv(t *testing.T, extra ...string) *adminEnv {
	t.Helper()
	return startAdminEnvWith(t, strings.Join(extra, ""))
}

// startAdminEnvWith is startAdminEnv with more YAML at the end of the
// configuration file.
func startAdminEnvWith(t *testing.T, extra string) *adminEnv {
	t.Helper()
	return startAdminEnvConfig(t, `listeners:
  - name: devices
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
data_dir: data
admin:
  listen: 127.0.0.1:0
`+extra)
}

// startAdminEnvConfig is startAdminEnv with the whole configuration
// file, which must keep data_dir: data and an admin listener.
func startAdminEnvConfig(t *testing.T, yaml string) *adminEnv {
	t.Helper()
	e := &adminEnv{dir: t.TempDir()}
	e.data = filepath.Join(e.dir, "data")
	writeFile(t, filepath.Join(e.dir, "moat.yaml"), yaml)
	e.viewer = createToken(t, e.dir, "ci-viewer", "viewer")
	e.operator = createToken(t, e.dir, "ci-operator", "operator")
	if fi, err := os.Stat(filepath.Join(e.data, "admin-tokens.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode())
	}
	raw, _ := os.ReadFile(filepath.Join(e.data, "admin-tokens.json"))
	if strings.Contains(string(raw), e.viewer) || strings.Contains(string(raw), strings.TrimPrefix(e.viewer, "moat_")) {
		t.Fatal("the token file holds a token in clear")
	}
	e.proc = startMoat(t, e.dir, "-c", "moat.yaml")
	e.mqtt = e.proc.port(0)
	t.Cleanup(func() {
		if strings.Contains(e.proc.logs.String(), "DATA RACE") {
			t.Error("the race detector reported a data race in moat serve")
		}
	})
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(e.data, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	e.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(e.http.CloseIdleConnections)
	e.base = "https://" + e.proc.logAddr(t, "admin: serving the API", "address")
	return e
}

// call makes an API request and returns the status and body.
func (e *adminEnv) call(t *testing.T, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// device issues a device certificate from the built-in CA and connects
// it with mosquitto_sub over mutual TLS; it runs until the test ends.
func (e *adminEnv) device(t *testing.T, name string) (serial string, proc *exec.Cmd, exited chan struct{}) {
	t.Helper()
	moatCmd(t, e.dir, "ca", "issue", "device", name, "--dir", filepath.Join(e.data, "ca"), "--out", name)
	certs, err := pki.LoadCertificatesFile(filepath.Join(e.dir, name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(e.mqtt), "-V", "5",
		"--cafile", filepath.Join(e.data, "ca", "ca.pem"), "--cert", filepath.Join(e.dir, name+".pem"),
		"--key", filepath.Join(e.dir, name+".key"), "-i", name, "-t", "devices/"+name+"/#")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto_sub %s output:\n%s", name, out.String())
		}
	})
	return pki.SerialString(certs[0].SerialNumber), cmd, exited
}

type clientsResp struct {
	Clients []struct {
		ClientID    string `json:"client_id"`
		Identity    string `json:"identity"`
		Listener    string `json:"listener"`
		Remote      string `json:"remote_address"`
		Protocol    string `json:"protocol_version"`
		TLSVersion  string `json:"tls_version"`
		Certificate *struct {
			Subject  string    `json:"subject"`
			Issuer   string    `json:"issuer"`
			Serial   string    `json:"serial"`
			NotAfter time.Time `json:"not_after"`
		} `json:"certificate"`
	} `json:"clients"`
}

func (e *adminEnv) clients(t *testing.T) clientsResp {
	t.Helper()
	code, b := e.call(t, "GET", "/api/v1/clients", e.viewer, nil)
	if code != 200 {
		t.Fatalf("GET /api/v1/clients: %d %s", code, b)
	}
	var cr clientsResp
	if err := json.Unmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	return cr
}

var connectionsRe = regexp.MustCompile(`(?m)^moat_connections (\S+)$`)

func (e *adminEnv) connectionsMetric(t *testing.T) (float64, []byte) {
	t.Helper()
	code, b := e.call(t, "GET", "/metrics", e.viewer, nil)
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, b)
	}
	m := connectionsRe.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no moat_connections in /metrics:\n%s", b)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v, b
}

// TestAdminAPI runs the admin API of a real `moat serve` with a device
// connected over mutual TLS by mosquitto_sub: tokens and roles, the
// client list with the certificate identity, metrics, bans and kick.
func TestAdminAPI(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub")
	e := startAdminEnv(t)
	serial, _, exited := e.device(t, "sensor-7")

	// No token, a malformed and an unknown token: 401.
	for _, tok := range []string{"", "moat_not-a-real-token", "garbage"} {
		for _, path := range []string{"/api/v1/clients", "/metrics", "/api/v1/openapi.json"} {
			if code, b := e.call(t, "GET", path, tok, nil); code != 401 {
				t.Errorf("GET %s with token %q: %d %s; want 401", path, tok, code, b)
			}
		}
	}

	// The device appears with its certificate identity.
	var cr clientsResp
	testutil.WaitFor(t, "the device in /api/v1/clients", 10*time.Second, func() bool {
		cr = e.clients(t)
		return len(cr.Clients) == 1
	})
	c := cr.Clients[0]
	if c.ClientID != "sensor-7" || c.Identity != "sensor-7" || c.Listener != "devices" || c.Protocol != "5.0" ||
		c.TLSVersion != "TLS 1.3" || !strings.HasPrefix(c.Remote, "127.0.0.1:") {
		t.Errorf("client: %+v", c)
	}
	if c.Certificate == nil || !strings.Contains(c.Certificate.Subject, "CN=sensor-7") || c.Certificate.Serial != serial ||
		c.Certificate.Issuer == "" || c.Certificate.NotAfter.Before(time.Now()) {
		t.Errorf("client certificate: %+v; want CN=sensor-7 serial %s", c.Certificate, serial)
	}

	// moat_connections equals the connected clients; promtool is clean.
	if v, _ := e.connectionsMetric(t); v != 1 {
		t.Errorf("moat_connections = %v; want 1", v)
	}
	if _, err := exec.LookPath("promtool"); err == nil {
		_, body := e.connectionsMetric(t)
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not installed (make test installs prometheus)")
	}

	// A viewer may not change anything.
	for _, m := range []struct{ method, path string }{
		{"POST", "/api/v1/clients/sensor-7/kick"}, {"POST", "/api/v1/bans"}, {"DELETE", "/api/v1/bans/x"},
		{"DELETE", "/api/v1/retained?topic=a"}, {"POST", "/api/v1/config/reload"}, {"POST", "/api/v1/certificates/01/revoke"},
	} {
		if code, b := e.call(t, m.method, m.path, e.viewer, map[string]string{}); code != 403 {
			t.Errorf("viewer %s %s: %d %s; want 403", m.method, m.path, code, b)
		}
	}

	// Bans: add, list, remove (in the guard, kept in the durable store).
	code, b := e.call(t, "POST", "/api/v1/bans", e.operator, map[string]string{"kind": "client_id", "value": "rogue-1", "reason": "test", "duration": "1h"})
	if code != 201 {
		t.Fatalf("add ban: %d %s", code, b)
	}
	var ban struct{ ID, Value string }
	json.Unmarshal(b, &ban)
	_, b = e.call(t, "GET", "/api/v1/bans", e.viewer, nil)
	if !strings.Contains(string(b), `"rogue-1"`) {
		t.Fatalf("ban not listed: %s", b)
	}
	// The same list moat ban sees, through the broker's control socket.
	if code, out, errOut := runMoat("ban", "list", "--data", e.data); code != 0 || !strings.Contains(out, ban.ID) {
		t.Fatalf("ban %s not in moat ban list: %d %s%s", ban.ID, code, out, errOut)
	}
	if code, b := e.call(t, "DELETE", "/api/v1/bans/"+ban.ID, e.operator, nil); code != 200 {
		t.Fatalf("remove ban: %d %s", code, b)
	}
	if _, b := e.call(t, "GET", "/api/v1/bans", e.viewer, nil); strings.Contains(string(b), "rogue-1") {
		t.Fatalf("ban still listed: %s", b)
	}

	// The certificate inventory lists the device.
	if code, b := e.call(t, "GET", "/api/v1/certificates", e.viewer, nil); code != 200 || !strings.Contains(string(b), serial) {
		t.Errorf("certificates: %d %s", code, b)
	}
	// The configuration is served.
	if code, b := e.call(t, "GET", "/api/v1/config", e.viewer, nil); code != 200 || !strings.Contains(string(b), `"devices"`) {
		t.Errorf("config: %d %s", code, b)
	}

	// Kick: the device is disconnected and leaves the list.
	if code, b := e.call(t, "POST", "/api/v1/clients/sensor-7/kick", e.operator, map[string]string{"reason": "maintenance"}); code != 200 {
		t.Fatalf("kick: %d %s", code, b)
	}
	if !e.proc.waitLog(t, "client disconnected by an operator", "admin: change") {
		t.Error("the kick is not logged")
	}
	testutil.WaitFor(t, "the device to leave", 10*time.Second, func() bool {
		select {
		case <-exited:
			return len(e.clients(t).Clients) == 0
		default:
		}
		return len(e.clients(t).Clients) == 0
	})
	testutil.WaitFor(t, "moat_connections 0", 10*time.Second, func() bool { v, _ := e.connectionsMetric(t); return v == 0 })
	if code, _ := e.call(t, "POST", "/api/v1/clients/sensor-7/kick", e.operator, nil); code != 404 {
		t.Errorf("kick of a client not connected: %d; want 404", code)
	}

	// Revocation through the API marks the device's certificate revoked.
	if code, b := e.call(t, "POST", "/api/v1/certificates/"+serial+"/revoke", e.operator, map[string]string{"reason": "keyCompromise"}); code != 200 ||
		!strings.Contains(string(b), `"status": "revoked"`) {
		t.Errorf("revoke: %d %s", code, b)
	}
	if code, b := e.call(t, "GET", "/api/v1/audit", e.viewer, nil); code != 200 || !strings.Contains(string(b), `"chain"`) {
		t.Errorf("audit: %d %s", code, b)
	}

	// Tokens apply without a restart: a new one works, a revoked one not.
	late := createToken(t, e.dir, "late", "viewer")
	if code, b := e.call(t, "GET", "/api/v1/whoami", late, nil); code != 200 || !strings.Contains(string(b), `"late"`) {
		t.Fatalf("token created while running: %d %s", code, b)
	}
	moatCmd(t, e.dir, "admin", "token", "revoke", "late", "--data", "data")
	if code, _ := e.call(t, "GET", "/api/v1/whoami", late, nil); code != 401 {
		t.Fatalf("revoked token: %d; want 401", code)
	}
}

// TestAdminDashboardHeaders: the dashboard is served with a strict
// Content-Security-Policy and no cookie.
func TestAdminDashboardHeaders(t *testing.T) {
	t.Parallel()
	e := startAdminEnv(t)
	resp, err := e.http.Get(e.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.Contains(string(body), "app.js") {
		t.Fatalf("GET /: %s", resp.Status)
	}
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("CSP allows inline code: %q", csp)
	}
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("cookie or CORS header set: %v", resp.Header)
	}
	if resp.Header.Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS on HTTPS")
	}

	// On loopback the same port also answers plain HTTP, with the same
	// token check.
	plain := &adminEnv{base: strings.Replace(e.base, "https://", "http://", 1), http: &http.Client{Timeout: 10 * time.Second}, viewer: e.viewer}
	if code, b := plain.call(t, "GET", "/metrics", "", nil); code != 401 {
		t.Errorf("plain HTTP /metrics without a token: %d %s", code, b)
	}
	if code, b := plain.call(t, "GET", "/api/v1/whoami", e.viewer, nil); code != 200 || !strings.Contains(string(b), "ci-viewer") {
		t.Errorf("plain HTTP whoami: %d %s", code, b)
	}
}

// TestAdminRefusesPlainNonLoopback: without a certificate for HTTPS, the
// admin API may only listen on loopback, because bearer tokens would
// cross the network in clear.
func TestAdminRefusesPlainNonLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The port is never bound: serve refuses the admin address first.
	writeFile(t, filepath.Join(dir, "m.conf"), "listener 1883 127.0.0.1\nallow_anonymous true\n")
	cmd := exec.Command(moatBin, "serve", "-c", "m.conf", "--admin", "0.0.0.0:0")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not loopback") {
		t.Fatalf("plain non-loopback admin address must be refused: %v\n%s", err, out)
	}
}

// TestAdminPlainLoopback: a broker without a certificate serves the admin
// API over plain HTTP on loopback; moat_connections follows the clients
// connected with mosquitto_sub.
func TestAdminPlainLoopback(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub")
	dir := t.TempDir()
	tok := createToken(t, dir, "scrape", "viewer")
	m := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "m.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", ports[0]))
		return []string{"-c", "m.conf", "--data", "data", "--admin", "127.0.0.1:0"}
	})
	port := m.port(0)
	e := &adminEnv{base: "http://" + m.logAddr(t, "admin: serving the API", "address"), http: &http.Client{Timeout: 10 * time.Second}, viewer: tok}
	if code, _ := e.call(t, "GET", "/metrics", "", nil); code != 401 {
		t.Fatalf("/metrics without a token: %d", code)
	}
	for i := range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-i", "plain-"+strconv.Itoa(i), "-t", "x")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); cmd.Wait() })
	}
	testutil.WaitFor(t, "moat_connections 3", 10*time.Second, func() bool { v, _ := e.connectionsMetric(t); return v == 3 })
	if n := len(e.clients(t).Clients); n != 3 {
		t.Fatalf("/api/v1/clients lists %d clients; want 3", n)
	}
}
