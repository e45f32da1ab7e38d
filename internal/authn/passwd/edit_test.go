package passwd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/authn"
)

func TestEditorModes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new")
	if _, err := Edit(path, false); err == nil || !strings.Contains(err.Error(), "-c") {
		t.Fatalf("missing file without create: %v", err)
	}
	e, err := Edit(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Set("u", []byte("pw")); err != nil {
		t.Fatal(err)
	}
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new file mode %v %v, want 0600", fi.Mode(), err)
	}
	// An existing file keeps its mode (a group the broker runs as may
	// read it).
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	e, err = Edit(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Set("v", []byte("pw2")); err != nil {
		t.Fatal(err)
	}
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", fi.Mode())
	}
	// Written through a symlink, which stays a symlink.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	e, err = Edit(link, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Delete("u"); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete("u"); err == nil {
		t.Error("deleting a missing user succeeded")
	}
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("the symlink was replaced")
	}
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, f, "u", "pw", authn.Deny)
	wantVerdict(t, f, "v", "pw2", authn.Allow)
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestUpgrade: -U hashes plain-text lines and leaves hashed lines and
// comments alone. (mosquitto_passwd 2.0 hashes the hash of an already
// hashed line, locking its user out when -U runs twice.)
func TestUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	hashed := hashLine(t, cheap, "h", "hashed pw")
	weak := "carol:$6$mtJg/l7/eq4NCCez$EcCKIieULb2oT1FqPDkLpyG0MI6eBqQ1LVs5JlL/cFfMayz2ojSqew8jbnj2OBh6l1Z+dklA11lNngjGUZ9xqA==\n"
	writeFile(t, path, "# keep me\n"+hashed+"p: plain pw \n"+weak)
	if _, err := Load(path, Config{}); err == nil || strings.Contains(err.Error(), "plain pw") {
		t.Fatalf("plain-text file loaded or its password shown: %v", err)
	}
	for range 2 {
		e, err := Edit(path, false)
		if err != nil {
			t.Fatal(err)
		}
		done, w, err := e.Upgrade()
		if err != nil {
			t.Fatal(err)
		}
		if len(w) != 1 || w[0] != "carol" {
			t.Errorf("weak %v", w)
		}
		if err := e.Write(); err != nil {
			t.Fatal(err)
		}
		if len(done) > 1 || (len(done) == 1 && done[0] != "p") {
			t.Errorf("hashed %v", done)
		}
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "# keep me\n"+hashed) || !strings.HasSuffix(string(data), weak) {
		t.Errorf("untouched lines changed:\n%s", data)
	}
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Blanks around a plain-text password are dropped, as Mosquitto does.
	wantVerdict(t, f, "p", "plain pw", authn.Allow)
	wantVerdict(t, f, "h", "hashed pw", authn.Allow)
	wantVerdict(t, f, "carol", "carol-sha512", authn.Allow)
}

func TestEditorRefuses(t *testing.T) {
	e, err := Edit(filepath.Join(t.TempDir(), "f"), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ user, pw, want string }{
		{"a:b", "pw", "':'"},
		{"#a", "pw", "comment"},
		{" a", "pw", "blank"},
		{"", "pw", "empty username"},
		{"a\nb", "pw", "control"},
		{"a", "", "empty password"},
		{"a", "x\ny", "line break"},
		{"a", strings.Repeat("x", MaxPassword+1), "MQTT allows"},
	} {
		if err := e.Set(tc.user, []byte(tc.pw)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Set(%q): %v, want %q", tc.user, err, tc.want)
		}
	}
}
