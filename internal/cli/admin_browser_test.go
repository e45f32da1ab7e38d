package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/moatmq/moat/internal/testutil"
)

// artifactsDir is where browser tests keep their screenshots:
// $MOAT_TEST_ARTIFACTS/NAME when set, else a temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("MOAT_TEST_ARTIFACTS"); d != "" {
		dir := filepath.Join(d, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// TestAdminDashboardBrowser drives the dashboard in headless Chromium
// against a real `moat serve` with a device connected over mutual TLS:
// log in with a token, find the device with its certificate identity,
// kick it, add and remove a ban. Every request the page makes must go to
// the admin origin (no CDN, no external font, nothing else).
func TestAdminDashboardBrowser(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub")
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (make test installs it)")
	}
	e := startAdminEnv(t)
	serial, _, _ := e.device(t, "sensor-9")
	testutil.WaitFor(t, "the device to connect", 10*time.Second, func() bool { return len(e.clients(t).Clients) == 1 })
	shots := artifactsDir(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU,
		// The admin listener serves the built-in CA's certificate,
		// which this throwaway browser profile does not trust.
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1400, 1000))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()

	var mu sync.Mutex
	var requests []string
	// Listen starts the browser; the steps run under a timeout of their
	// own, which must not be the browser's.
	if err := chromedp.Listen(bctx, func(ev any) {
		if r, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requests = append(requests, r.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	ctx, cancelT := context.WithTimeout(bctx, 60*time.Second)
	defer cancelT()
	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("dashboard: %s: %v (screenshots in %s)", what, err, shots)
		}
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("dashboard: text of %s: %v", sel, err)
		}
		return s
	}
	row := chromedp.CSS(`#clients-body tr[data-client-id="sensor-9"]`)
	start := time.Now()

	step("load", chromedp.Navigate(e.base+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	shot("01-login")
	step("log in", chromedp.SendKeys(chromedp.ID("token"), e.operator), chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("overview")), chromedp.WaitVisible(chromedp.CSS(`#nav a[href="#clients"]`)))
	shot("02-overview")
	step("clients page", chromedp.Click(chromedp.CSS(`#nav a[href="#clients"]`)), chromedp.WaitVisible(row))
	rowText := text(`#clients-body tr[data-client-id="sensor-9"]`)
	shot("03-clients")
	step("kick", chromedp.Click(chromedp.CSS(`#clients-body tr[data-client-id="sensor-9"] button.kick`)), chromedp.WaitNotPresent(row))
	shot("04-kicked")
	step("add a ban", chromedp.Click(chromedp.CSS(`#nav a[href="#bans"]`)), chromedp.WaitVisible(chromedp.ID("ban-form")),
		chromedp.SetValue(chromedp.ID("ban-kind"), "client_id"), chromedp.SendKeys(chromedp.ID("ban-value"), "sensor-9"),
		chromedp.SendKeys(chromedp.ID("ban-reason"), "browser test"), chromedp.Click(chromedp.ID("ban-add")),
		chromedp.WaitVisible(chromedp.CSS(`#bans-body tr[data-ban-id]`)))
	banText := text(`#bans-body`)
	shot("05-ban-added")
	step("remove the ban", chromedp.Click(chromedp.CSS(`#bans-body button.remove-ban`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#bans-body tr[data-ban-id]`)))
	shot("06-ban-removed")
	step("posture page", chromedp.Click(chromedp.CSS(`#nav a[href="#posture"]`)), chromedp.WaitVisible(chromedp.ID("po-tls")),
		chromedp.WaitVisible(chromedp.CSS(`#po-tls tr`)), chromedp.WaitVisible(chromedp.CSS(`#po-ocsp tr`)),
		chromedp.WaitVisible(chromedp.CSS(`#po-detectors tr`)))
	posture := map[string]string{}
	for _, id := range []string{"po-profile", "po-fips", "po-pqhs", "po-authfail", "po-detections", "po-ocsp", "po-detectors", "po-crls"} {
		posture[id] = text("#" + id)
	}
	shot("07-posture")
	t.Logf("browser steps took %v; screenshots in %s", time.Since(start).Round(time.Millisecond), shots)
	if !strings.Contains(rowText, "CN=sensor-9") || !strings.Contains(rowText, serial) {
		t.Errorf("client row %q lacks the certificate subject CN=sensor-9 or serial %s", rowText, serial)
	}
	// The security posture panel: profile, FIPS state, the post-quantum
	// share of the handshakes, authentication failures and detections
	// (by detector), CRL and OCSP freshness.
	for id, want := range map[string]string{
		"po-profile": "none", "po-fips": "off", "po-pqhs": "% of", "po-ocsp": "devices", "po-detectors": "auth_failures",
		"po-crls": "crl.pem",
	} {
		if !strings.Contains(posture[id], want) {
			t.Errorf("posture panel #%s = %q, want it to contain %q", id, posture[id], want)
		}
	}
	for _, id := range []string{"po-authfail", "po-detections"} {
		if _, err := strconv.Atoi(strings.TrimSpace(posture[id])); err != nil {
			t.Errorf("posture panel #%s = %q, want a count", id, posture[id])
		}
	}
	if !strings.Contains(banText, "sensor-9") || !strings.Contains(banText, "client_id") {
		t.Errorf("ban row: %q", banText)
	}
	if !e.proc.waitLog(t, `action=kick target=sensor-9 result=ok`, `action=ban.add`, `action=ban.remove`) {
		t.Error("the dashboard's changes are not logged")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(requests) < 5 {
		t.Fatalf("only %d requests seen: %v", len(requests), requests)
	}
	for _, u := range requests {
		if !strings.HasPrefix(u, e.base+"/") {
			t.Errorf("the page requested %s, outside the admin origin %s", u, e.base)
		}
	}
}
