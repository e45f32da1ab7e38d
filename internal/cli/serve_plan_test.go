package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
)

// runMoat runs the moat command line in-process and returns its exit code
// and output.
func runMoat(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

// planPKI makes the seed's openssl PKI in dir plus the faulty files the
// plan tests need: the broker key encrypted (PKCS #8 and legacy PEM), a
// CRL that does not parse and a cafile that is not PEM.
func planPKI(t *testing.T, dir string) {
	t.Helper()
	opensslSeedPKI(t, dir)
	for _, s := range [][]string{
		{"pkey", "-in", "broker-key.pem", "-aes256", "-passout", "pass:secret", "-out", "enc-pkcs8.key"},
		{"rsa", "-in", "broker-key.pem", "-aes256", "-traditional", "-passout", "pass:secret", "-out", "enc-legacy.key"},
	} {
		cmd := exec.Command("openssl", s...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", s, err, out)
		}
	}
	writeFile(t, filepath.Join(dir, "bad-crl.pem"), "-----BEGIN X509 CRL-----\nAAAAAAAA\n-----END X509 CRL-----\n")
	writeFile(t, filepath.Join(dir, "notpem.pem"), "this is not a certificate\n")
}

// TestServeCheckRefusesWhatServeRefuses runs `moat serve --check -c FILE`
// and `moat serve -c FILE` on files with one fault (two in the last case):
// both must fail, naming the fault and its file:line, and serve must fail
// before binding its port.
func TestServeCheckRefusesWhatServeRefuses(t *testing.T) {
	needTool(t, "openssl")
	dir := t.TempDir()
	planPKI(t, dir)
	t.Chdir(dir)
	port := testutil.FreePort(t) // serve must fail before binding it
	// Line 1 listener, 2 certfile, 3 keyfile, 4 cafile, 5 require_certificate, 6 the case's own line.
	conf := func(cert, key, ca, extra string) string {
		return fmt.Sprintf("listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\ncafile %s\nrequire_certificate true\n%s", port, cert, key, ca, extra)
	}
	good := func(extra string) string { return conf("broker-cert.pem", "broker-key.pem", "ca-cert.pem", extra) }
	tests := []struct {
		name, file, content string
		want                []string // each must appear in the error
	}{
		{"missing certfile", "m.conf", conf("missing.pem", "broker-key.pem", "ca-cert.pem", ""),
			[]string{"m.conf:2: ", "certfile missing.pem: no such file"}},
		{"missing keyfile", "m.conf", conf("broker-cert.pem", "missing.key", "ca-cert.pem", ""),
			[]string{"m.conf:3: ", "keyfile missing.key: no such file"}},
		{"encrypted key pkcs8", "m.conf", conf("broker-cert.pem", "enc-pkcs8.key", "ca-cert.pem", ""),
			[]string{"m.conf:3: ", "keyfile enc-pkcs8.key is encrypted", "openssl pkey -in enc-pkcs8.key"}},
		{"encrypted key legacy", "m.conf", conf("broker-cert.pem", "enc-legacy.key", "ca-cert.pem", ""),
			[]string{"m.conf:3: ", "keyfile enc-legacy.key is encrypted"}},
		{"cbc cipher", "m.conf", good("ciphers ECDHE-RSA-AES128-SHA\n"),
			[]string{"m.conf:6: ", "ECDHE-RSA-AES128-SHA is refused by policy", "CBC"}},
		{"crl does not parse", "m.conf", good("crlfile bad-crl.pem\n"),
			[]string{"m.conf:6: ", "crlfile bad-crl.pem"}},
		{"cafile not pem", "m.conf", conf("broker-cert.pem", "broker-key.pem", "notpem.pem", ""),
			[]string{"m.conf:4: ", "cafile notpem.pem", "no usable certificate"}},
		{"unknown key", "m.conf", good("bogus_key 1\n"),
			[]string{"m.conf:6: ", `unknown key "bogus_key"`}},
		{"two faults", "m.conf", conf("missing.pem", "broker-key.pem", "ca-cert.pem", "ciphers ECDHE-RSA-AES128-SHA\n"),
			[]string{"2 problems", "m.conf:2: ", "missing.pem", "m.conf:6: ", "ECDHE-RSA-AES128-SHA"}},
		{"yaml cbc suite", "m.yaml", fmt.Sprintf(`listeners:
  - address: 127.0.0.1:%d
    tls:
      cert: broker-cert.pem
      key: broker-key.pem
      client_ca: ca-cert.pem
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]
`, port),
			[]string{"m.yaml:7: ", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is refused by policy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, tt.file, tt.content)
			code, out, checkErr := runMoat("serve", "--check", "-c", tt.file)
			if code == 0 || strings.Contains(out, "configuration OK") {
				t.Fatalf("--check accepted the file (exit %d):\n%s%s", code, out, checkErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(checkErr, w) {
					t.Errorf("--check error lacks %q:\n%s", w, checkErr)
				}
			}
			code, _, serveErr := runMoat("serve", "--data", t.TempDir(), "-c", tt.file)
			if code == 0 {
				t.Fatalf("serve started:\n%s", serveErr)
			}
			if strings.Contains(serveErr, "listener ready") {
				t.Errorf("serve bound a listener before failing:\n%s", serveErr)
			}
			// The same plan fails the same way.
			if first := firstLine(checkErr); !strings.Contains(serveErr, first) || !strings.Contains(serveErr, lastLine(checkErr)) {
				t.Errorf("serve failed differently from --check:\n--check: %s\nserve: %s", checkErr, serveErr)
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatalf("port still bound after the failed start: %v", err)
			}
			ln.Close()
		})
	}
	t.Run("good", func(t *testing.T) {
		writeFile(t, "good.conf", good(""))
		if code, out, errb := runMoat("serve", "--check", "-c", "good.conf"); code != 0 || !strings.Contains(out, "configuration OK") {
			t.Fatalf("--check refused a good file (exit %d):\n%s%s", code, out, errb)
		}
	})
	t.Run("insecure override", func(t *testing.T) {
		writeFile(t, "o.conf", good("ciphers ECDHE-RSA-AES128-SHA\nallow_insecure_ciphers true\n"))
		code, out, errb := runMoat("serve", "--check", "-c", "o.conf")
		if code != 0 || !strings.Contains(errb, "warning: o.conf:1: listener") || !strings.Contains(errb, "allow_insecure_ciphers") {
			t.Fatalf("--check with the override: exit %d, want OK and a warning:\n%s%s", code, out, errb)
		}
	})
}

func firstLine(s string) string { l, _, _ := strings.Cut(strings.TrimSpace(s), "\n"); return l }

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// pathRE matches the absolute certificate paths of the golden files.
var pathRE = regexp.MustCompile(`/etc/\S+\.(pem|key)`)

// TestServeCheckAcceptsGoldenConfigs: every golden and example
// configuration that the config package accepts, with its certificate
// paths pointed at real files, gets the same verdict from the --check plan
// and the serve plan: --check accepts every one that serve accepts, and
// refuses the others.
func TestServeCheckAcceptsGoldenConfigs(t *testing.T) {
	t.Parallel()
	needTool(t, "openssl")
	pki := t.TempDir()
	opensslSeedPKI(t, pki)
	golden, _ := filepath.Abs("../config/testdata/golden")
	inputs, _ := filepath.Glob(filepath.Join(golden, "*.conf"))
	yamls, _ := filepath.Glob(filepath.Join(golden, "*.yaml"))
	inputs = append(inputs, yamls...)
	example, _ := filepath.Abs("../../examples/moat.yaml")
	inputs = append(inputs, example)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	accepted := 0
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			text := pathRE.ReplaceAllStringFunc(string(data), func(p string) string {
				switch base := filepath.Base(p); {
				case strings.Contains(base, "key"):
					return filepath.Join(pki, "broker-key.pem")
				case strings.Contains(base, "ca"):
					return filepath.Join(pki, "ca-cert.pem")
				}
				return filepath.Join(pki, "broker-cert.pem")
			})
			text = strings.ReplaceAll(text, "include_dir testdata/golden/", "include_dir "+golden+"/")
			file := filepath.Join(t.TempDir(), filepath.Base(in))
			writeFile(t, file, text)
			cfg, err := config.Load(file)
			if err != nil {
				t.Skipf("not a valid configuration (the config golden test covers it): %v", firstLine(err.Error()))
			}
			cfg.DataDir = t.TempDir()
			// serve first: it creates the built-in CA that --check then
			// loads instead of skipping.
			servePlan, serveErr := buildPlan(cfg, log, false)
			if serveErr == nil {
				servePlan.close()
			}
			checkPlan, checkErr := buildPlan(cfg, log, true)
			if checkErr == nil {
				if len(checkPlan.notes) > 0 {
					t.Errorf("--check did not load the built-in CA serve created: %v", checkPlan.notes)
				}
				checkPlan.close()
			}
			if (checkErr == nil) != (serveErr == nil) {
				t.Fatalf("--check and serve disagree:\n--check: %v\nserve: %v", checkErr, serveErr)
			}
			if serveErr != nil {
				// Some golden files name settings Moat refuses at start
				// (socket_domain): both refuse them.
				t.Logf("refused by both: %v", serveErr)
				return
			}
			accepted++
		})
	}
	if accepted < 5 {
		t.Errorf("only %d golden configurations were planned; the path rewriting is broken", accepted)
	}
}
