package pki

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

func TestMain(m *testing.M) {
	scryptLogN = 10 // keep Init fast under -race; the format records the cost
	testutil.VerifyTestMain(m)
}

var testPass = []byte("correct horse battery")

// newCA makes a CA in a temporary directory.
func newCA(t testing.TB, opts InitOptions) *CA {
	t.Helper()
	if opts.Passphrase == nil {
		opts.Passphrase = testPass
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := Init(dir, opts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return ca
}

// run runs a command and returns its combined output; it fails the test
// when the exit status differs from wantOK.
func run(t testing.TB, wantOK bool, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if (err == nil) != wantOK {
		t.Fatalf("%s %s: err=%v, want ok=%v\n%s", name, strings.Join(args, " "), err, wantOK, out.String())
	}
	return out.String()
}

// startServer serves the CA on 127.0.0.1 ports and returns base URLs.
func startServer(t testing.TB, ca *CA, cfg ServerConfig) (httpURL, estURL string, srv *Server) {
	t.Helper()
	srv, err := ca.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, hl, sl) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return "http://" + hl.Addr().String(), "https://" + sl.Addr().String(), srv
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func decodePEMBody(t testing.TB, b []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM")
	}
	return blk.Bytes
}

func encodePEMBody(b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: encryptedKeyPEMType, Bytes: b})
}

// base64Lines encodes b as base64 in 64-character CRLF lines, the way
// RFC 7030 clients before RFC 8951 sent requests.
func base64Lines(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var sb strings.Builder
	for len(s) > 64 {
		sb.WriteString(s[:64])
		sb.WriteString("\r\n")
		s = s[64:]
	}
	sb.WriteString(s)
	sb.WriteString("\r\n")
	return sb.String()
}
