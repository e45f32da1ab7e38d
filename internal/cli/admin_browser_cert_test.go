package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/moatmq/moat/internal/testutil"
)

// certBrowserProfile makes a throwaway Chromium profile that holds the
// client certificate and key of prefix (PREFIX.pem, PREFIX.key) in its NSS
// database, and selects it without asking for requests to origin. It
// returns the HOME to run Chromium with and its user data directory.
func certBrowserProfile(t *testing.T, prefix, origin string) (home, userData string) {
	t.Helper()
	dir := t.TempDir()
	home, userData = filepath.Join(dir, "home"), filepath.Join(dir, "profile")
	nss := filepath.Join(home, ".pki", "nssdb")
	for _, d := range []string{nss, filepath.Join(userData, "Default")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	p12 := filepath.Join(dir, "admin.p12")
	for _, c := range [][]string{
		{"certutil", "-N", "-d", "sql:" + nss, "--empty-password"},
		{"openssl", "pkcs12", "-export", "-in", prefix + ".pem", "-inkey", prefix + ".key", "-out", p12, "-passout", "pass:", "-name", "moat-admin"},
		{"pk12util", "-i", p12, "-d", "sql:" + nss, "-W", ""},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	// Chromium's setting for "select a client certificate automatically"
	// (what the AutoSelectCertificateForUrls policy sets): any certificate
	// the server accepts, for requests to origin from any page.
	prefs := map[string]any{"profile": map[string]any{"content_settings": map[string]any{"exceptions": map[string]any{
		"auto_select_certificate": map[string]any{origin + ",*": map[string]any{"setting": map[string]any{"filters": []any{map[string]any{}}}}},
	}}}}
	b, _ := json.Marshal(prefs)
	writeFile(t, filepath.Join(userData, "Default", "Preferences"), string(b))
	return home, userData
}

// TestAdminDashboardClientCertificate: a browser that holds an operator
// certificate of the built-in CA (URI SAN urn:moat:admin:operator) and
// presents it to any page's request to the admin origin. First the
// attack: a page on another origin makes that browser send a change by
// form (text/plain body shaped as JSON) and by fetch (a POST with a text
// body, a DELETE); none takes effect, since certificate-authenticated
// changes must come from the API's own origin with a JSON body and the API
// answers no CORS preflight. Then the dashboard itself logs in by the
// certificate alone, shows the mTLS device, kicks it, adds and removes a
// ban, and fetches nothing from outside its origin.
func TestAdminDashboardClientCertificate(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub", "openssl", "certutil", "pk12util")
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (make test installs it)")
	}
	e := startAdminEnv(t)
	e.device(t, "sensor-9")
	testutil.WaitFor(t, "the device to connect", 10*time.Second, func() bool { return len(e.clients(t).Clients) == 1 })
	moatCmd(t, e.dir, "ca", "issue", "device", "ops-laptop", "--uri", "urn:moat:admin:operator",
		"--dir", filepath.Join(e.data, "ca"), "--out", "ops-laptop")
	home, userData := certBrowserProfile(t, filepath.Join(e.dir, "ops-laptop"), e.base)
	shots := artifactsDir(t)

	// A ban for the attack to try to remove.
	code, b := e.call(t, "POST", "/api/v1/bans", e.operator, map[string]string{"kind": "client_id", "value": "keep-me", "reason": "kept"})
	if code != 201 {
		t.Fatalf("add ban: %d %s", code, b)
	}
	var kept struct{ ID string }
	json.Unmarshal(b, &kept)

	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><title>prize</title>
<form id="f" method="POST" action="%[1]s/api/v1/clients/sensor-9/kick" enctype="text/plain" target="sink">
<input name='{"reason":"csrf","x":"' value='"}'></form>
<iframe name="sink"></iframe>
<script>
Promise.allSettled([
  // A DELETE needs a CORS preflight, which the API never answers.
  fetch("%[1]s/api/v1/bans/%[2]s", {method: "DELETE", mode: "cors", credentials: "include"}),
  // A POST without a preflight can only carry a text body.
  fetch("%[1]s/api/v1/bans", {method: "POST", mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({kind: "client_id", value: "victim", reason: "csrf"})}),
]).then(() => { document.title = "fetched"; document.getElementById("f").submit(); });
</script>`, e.base, kept.ID)
	}))
	defer evil.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.WindowSize(1400, 1000),
		chromedp.UserDataDir(userData), chromedp.Env("HOME="+home))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	var mu sync.Mutex
	var requests []string
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
			t.Fatalf("%s: %v (screenshots in %s)", what, err, shots)
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
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}

	// logLine waits for a line of the broker's log that holds every one
	// of subs.
	logLine := func(what string, subs ...string) {
		t.Helper()
		testutil.WaitFor(t, what, 10*time.Second, func() bool {
			for line := range strings.Lines(e.proc.logs.String()) {
				all := true
				for _, s := range subs {
					all = all && strings.Contains(line, s)
				}
				if all {
					return true
				}
			}
			return false
		})
	}
	const refused = "admin: change with a client certificate refused: not from the API's own origin"

	// The attack: the fetches run first, then the form.
	step("the other origin's page", chromedp.Navigate(evil.URL+"/"), chromedp.WaitReady(`iframe`))
	logLine("the form's kick to be refused", refused, "certificate=cert:ops-laptop/", "path=/api/v1/clients/sensor-9/kick")
	logLine("the fetch's ban to be refused", refused, "certificate=cert:ops-laptop/", "path=/api/v1/bans ")
	shot("01-attack")
	if n := len(e.clients(t).Clients); n != 1 {
		t.Fatalf("%d clients connected after the attack; the device was kicked", n)
	}
	_, b = e.call(t, "GET", "/api/v1/bans", e.viewer, nil)
	if !strings.Contains(string(b), kept.ID) || strings.Contains(string(b), "victim") {
		t.Fatalf("bans after the attack: %s", b)
	}
	mu.Lock()
	attackRequests := len(requests)
	mu.Unlock()

	// The dashboard, by certificate.
	row := chromedp.CSS(`#clients-body tr[data-client-id="sensor-9"]`)
	step("load", chromedp.Navigate(e.base+"/"), chromedp.WaitVisible(chromedp.ID("overview")),
		chromedp.WaitVisible(chromedp.CSS(`#nav a[href="#clients"]`)))
	who := text("#who")
	shot("02-overview")
	if !strings.Contains(who, "cert:ops-laptop/") || !strings.Contains(who, "operator, client certificate") {
		t.Errorf("logged in as %q; want the certificate ops-laptop as operator", who)
	}
	step("clients page", chromedp.Click(chromedp.CSS(`#nav a[href="#clients"]`)), chromedp.WaitVisible(row))
	if rt := text(`#clients-body tr[data-client-id="sensor-9"]`); !strings.Contains(rt, "CN=sensor-9") {
		t.Errorf("client row %q lacks the certificate subject", rt)
	}
	step("kick", chromedp.Click(chromedp.CSS(`#clients-body tr[data-client-id="sensor-9"] button.kick`)), chromedp.WaitNotPresent(row))
	shot("03-kicked")
	step("add a ban", chromedp.Click(chromedp.CSS(`#nav a[href="#bans"]`)), chromedp.WaitVisible(chromedp.ID("ban-form")),
		chromedp.SetValue(chromedp.ID("ban-kind"), "client_id"), chromedp.SendKeys(chromedp.ID("ban-value"), "sensor-9"),
		chromedp.SendKeys(chromedp.ID("ban-reason"), "certificate browser test"), chromedp.Click(chromedp.ID("ban-add")),
		chromedp.WaitVisible(chromedp.CSS(`#bans-body tr:nth-child(2)[data-ban-id]`)))
	shot("04-ban-added")
	step("remove the ban", chromedp.Click(chromedp.CSS(`#bans-body tr:nth-child(2) button.remove-ban`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#bans-body tr:nth-child(2)[data-ban-id]`)))
	shot("05-ban-removed")
	cert := `token=cert:ops-laptop/`
	logLine("the kick logged as the certificate's", cert, `action=kick target=sensor-9 result=ok`)
	logLine("the ban logged as the certificate's", cert, `action=ban.add target="client_id sensor-9" result=ok`)
	logLine("the ban's removal logged as the certificate's", cert, `action=ban.remove`, `result=ok`)
	mu.Lock()
	defer mu.Unlock()
	for _, u := range requests[attackRequests:] {
		if !strings.HasPrefix(u, e.base+"/") {
			t.Errorf("the dashboard requested %s, outside the admin origin %s", u, e.base)
		}
	}
}
