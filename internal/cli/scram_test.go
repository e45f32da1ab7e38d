package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/authn/scram/scramtest"
	"github.com/moatmq/moat/internal/packet"
)

// TestSCRAMAddAndPub writes credentials with moat scram add and publishes
// with moat pub --auth-method against a peer that reads them.
func TestSCRAMAddAndPub(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "scram.creds")
	if r := psRun(ctx, "s3cret pw\n", "scram", "add", path, "alice"); r.code == 0 || !strings.Contains(r.err, "-c") {
		t.Fatalf("missing file without -c: %+v", r)
	}
	if r := psRun(ctx, "s3cret pw\n", "scram", "add", "-c", "--iterations", "5000", path, "alice"); r.code != 0 {
		t.Fatalf("scram add: %+v", r)
	}
	if r := psRun(ctx, "other\n", "scram", "add", "-m", "SCRAM-SHA-512", path, "bob"); r.code != 0 {
		t.Fatalf("scram add: %+v", r)
	}
	for name, tc := range map[string]struct {
		stdin string
		args  []string
		want  string
	}{
		"non-ascii":     {"pässword\n", []string{path, "carol"}, "ASCII"},
		"iterations":    {"pw\n", []string{"--iterations", "1000", path, "carol"}, "4096"},
		"mechanism":     {"pw\n", []string{"-m", "SCRAM-SHA-1", path, "carol"}, "SCRAM-SHA-1"},
		"no-password":   {"", []string{path, "carol"}, "no password"},
		"colon-in-name": {"pw\n", []string{path, "ca:rol"}, "':'"},
	} {
		if r := psRun(ctx, tc.stdin, append([]string{"scram", "add"}, tc.args...)...); r.code == 0 || !strings.Contains(r.err, tc.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", name, r.code, r.err, tc.want)
		}
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "s3cret") || strings.Count(string(data), "\n") != 3 ||
		!strings.Contains(string(data), "alice:SCRAM-SHA-256:5000:") || !strings.Contains(string(data), "bob:SCRAM-SHA-512:4096:") {
		t.Fatalf("file:\n%s", data)
	}
	f, err := scram.LoadFile(path, scram.FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := scram.NewServer(scram.ServerConfig{Lookup: f})
	if err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("s3cret pw\n"), 0o600)
	badFile := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(badFile, []byte("wrong\n"), 0o600)
	for _, tc := range []struct {
		name, method, pwFile, user string
		ok                         bool
		want                       string
	}{
		{"sha256", "SCRAM-SHA-256", pwFile, "alice", true, ""},
		{"sha512", "SCRAM-SHA-512", pwFile, "alice", true, ""},
		{"wrong-password", "SCRAM-SHA-256", badFile, "alice", false, "not authorized"},
		{"unknown-user", "SCRAM-SHA-256", pwFile, "mallory", false, "not authorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			pubs := make(chan *packet.Publish, 1)
			errc := (&scramtest.Peer{Server: srv, Published: pubs}).Serve(ln)
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			r := psRun(ctx, "", "pub", "-h", "127.0.0.1", "-p", port, "-t", "t/scram", "-m", "hello", "-q", "1",
				"-u", tc.user, "--password-file", tc.pwFile, "--auth-method", tc.method)
			if (r.code == 0) != tc.ok || !strings.Contains(r.err, tc.want) {
				t.Fatalf("exit %d, stderr %q", r.code, r.err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("peer: %v", err)
			}
			if tc.ok {
				if p := <-pubs; p.Topic != "t/scram" || string(p.Payload) != "hello" {
					t.Fatalf("published %v", p)
				}
			}
		})
	}
	// Refused before connecting.
	for name, args := range map[string][]string{
		"v311":        {"-V", "311", "-u", "alice", "--password-file", pwFile, "--auth-method", "SCRAM-SHA-256"},
		"no-user":     {"--password-file", pwFile, "--auth-method", "SCRAM-SHA-256"},
		"no-password": {"-u", "alice", "--auth-method", "SCRAM-SHA-256"},
		"method":      {"-u", "alice", "--password-file", pwFile, "--auth-method", "PLAIN"},
	} {
		r := psRun(ctx, "", append([]string{"pub", "-h", "127.0.0.1", "-p", "1", "-t", "x", "-m", "y"}, args...)...)
		if r.code == 0 || !strings.Contains(r.err, "auth-method") {
			t.Errorf("%s: exit %d, stderr %q", name, r.code, r.err)
		}
	}
}
