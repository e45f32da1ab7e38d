//go:build unix

package passwd

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestEditorKeepsOwner: root editing the broker's file must not make it
// root's, or a broker running as another account could no longer read it.
func TestEditorKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file another owner")
	}
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, hashLine(t, cheap, "u", "pw"))
	if err := os.Chown(path, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	e, err := Edit(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Set("v", []byte("pw")); err != nil {
		t.Fatal(err)
	}
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4321 || st.Gid != 4322 {
		t.Errorf("owner %d:%d, want 4321:4322", st.Uid, st.Gid)
	}
}
