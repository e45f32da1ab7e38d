package scram

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileAddLoadLookup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scram.creds")
	if err := AddToFile(path, "alice", false, rfcCredential(t)); err == nil {
		t.Fatal("AddToFile created a file without create")
	}
	c256, _ := NewCredential(SHA256, []byte("pw-one"), 0, nil)
	c512, _ := NewCredential(SHA512, []byte("pw-one"), 4096, nil)
	if err := AddToFile(path, "alice", true, c256, c512); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	// A comment and another user survive a change of alice.
	data, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("# operators\n"), data...), 0o600)
	if err := AddToFile(path, "bob", false, rfcCredential(t)); err != nil {
		t.Fatal(err)
	}
	n256, _ := NewCredential(SHA256, []byte("pw-two"), 0, nil)
	if err := AddToFile(path, "alice", false, n256); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "# operators" || !strings.HasPrefix(lines[1], "alice:SCRAM-SHA-256:4096:") ||
		!strings.HasPrefix(lines[2], "alice:SCRAM-SHA-512:") || !strings.HasPrefix(lines[3], "bob:SCRAM-SHA-256:") {
		t.Fatalf("file:\n%s", data)
	}
	if bytes.Contains(data, []byte("pw-")) {
		t.Fatal("password in the file")
	}
	f, err := LoadFile(path, FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 3 {
		t.Fatalf("Len %d", f.Len())
	}
	srv := newTestServer(t, f, ServerConfig{})
	for _, tc := range []struct {
		m    Mechanism
		user string
		pw   string
		ok   bool
	}{{SHA256, "alice", "pw-two", true}, {SHA256, "alice", "pw-one", false}, {SHA512, "alice", "pw-one", true}, {SHA512, "bob", "pencil", false}, {SHA256, "bob", "pencil", true}} {
		cl, _ := NewClient(tc.m, tc.user, []byte(tc.pw), ClientConfig{})
		if _, err := exchange(t, srv, tc.m.String(), cl); (err == nil) != tc.ok {
			t.Errorf("%s %s %s: %v", tc.m, tc.user, tc.pw, err)
		}
	}
	if _, err := f.LookupCredential(context.Background(), "carol", SHA256); !errors.Is(err, ErrUnknownUser) {
		t.Fatal(err)
	}
	// A broken file is refused on reload; the old contents stay.
	os.WriteFile(path, []byte("garbage\n"), 0o600)
	if err := f.Reload(); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Fatalf("Reload = %v", err)
	}
	if f.Len() != 3 {
		t.Fatal("failed reload changed the contents")
	}
	if _, err := LoadFile(path, FileConfig{MinIterations: 100}); err == nil {
		t.Fatal("MinIterations below 4096 accepted")
	}
	if err := AddToFile(path, "#x", false, c256); err == nil {
		t.Fatal("a username that makes a comment accepted")
	}
}

// TestSecurityHostileFile: a credentials file written by someone else (or
// damaged) must be refused with file:line errors, never half-loaded, and
// never allocate beyond its caps.
func TestSecurityHostileFile(t *testing.T) {
	good := rfcCredential(t).line("user")
	for name, tc := range map[string]struct{ data, want string }{
		"fields":        {"user:SCRAM-SHA-256:4096:abc\n", ":1: 4 fields"},
		"mechanism":     {strings.Replace(good, "SCRAM-SHA-256", "SCRAM-SHA-1", 1), ":1: user \"user\": mechanism"},
		"low-iter":      {strings.Replace(good, ":4096:", ":4095:", 1), "4095 iterations"},
		"huge-iter":     {strings.Replace(good, ":4096:", ":99999999999:", 1), "iteration count"},
		"leading-zero":  {strings.Replace(good, ":4096:", ":04096:", 1), "iteration count"},
		"salt":          {strings.Replace(good, ":W22ZaJ0SNY7soEsUEjb6gQ==:", ":W22Z:", 1), "salt"},
		"key-length":    {strings.Replace(good, ":W22ZaJ0SNY7soEsUEjb6gQ==:", ":W22ZaJ0SNY7soEsUEjb6gQ==:AAAA", 1), "keys must be 32 bytes"},
		"duplicate":     {good + "\n" + good + "\n", ":2: user \"user\" already has a SCRAM-SHA-256 credential on line 1"},
		"bom":           {"\xef\xbb\xbf" + good, "byte order mark"},
		"long-line":     {strings.Repeat("a", maxLine+1) + "\n", "line is"},
		"control":       {"us\x01er" + good[4:], "control character"},
		"many-problems": {strings.Repeat("x\n", 50), "more problems not shown"},
		"second-line":   {good + "\nbad\n", ":2:"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := parseFile("creds", []byte(tc.data), MinIterations)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Count(err.Error(), "\n") > maxErrors {
				t.Fatal("too many problems reported")
			}
		})
	}
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	fh, _ := os.Create(big)
	fh.Truncate(MaxFileSize + 1)
	fh.Close()
	if _, err := LoadFile(big, FileConfig{}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := LoadFile(dir, FileConfig{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
}

// TestFileRFC7677 loads the RFC 7677 user from testdata and replays the
// RFC's client messages against it.
func TestFileRFC7677(t *testing.T) {
	f, err := LoadFile("testdata/rfc7677.creds", FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.LookupCredential(context.Background(), "user", SHA256); got.line("user") != rfcCredential(t).line("user") {
		t.Fatal("the file's credential differs from NewCredential's")
	}
	srv := newTestServer(t, f, ServerConfig{Rand: strings.NewReader(rfcServerNonce)})
	srv.nonceLen = len(rfcServerNonce)
	conv, _ := srv.Begin("SCRAM-SHA-256")
	if out, _, _, err := conv.Step(context.Background(), []byte(rfcClientFirst)); err != nil || string(out) != rfcServerFirst {
		t.Fatal(out, err)
	}
	if out, done, _, err := conv.Step(context.Background(), []byte(rfcClientFinal)); err != nil || !done || string(out) != rfcServerFinal {
		t.Fatal(out, err)
	}
}
