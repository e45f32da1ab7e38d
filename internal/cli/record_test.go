package cli

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadRecord: a missing record is a first start, a written one reads
// back, and one that does not parse or has another version is an error.
func TestReadRecord(t *testing.T) {
	dir := t.TempDir()
	type rec struct {
		Version int               `json:"version"`
		Items   map[string]string `json:"items"`
	}
	var r rec
	if found, err := readRecord(filepath.Join(dir, "none.json"), &r); found || err != nil {
		t.Fatalf("missing file: found %v, err %v", found, err)
	}
	path := filepath.Join(dir, "r.json")
	if err := writeRecord(path, rec{Version: 1, Items: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode: %v %v", fi, err)
	}
	if found, err := readRecord(path, &r); !found || err != nil || r.Items["a"] != "b" {
		t.Fatalf("read back: found %v, err %v, %+v", found, err, r)
	}
	for name, data := range map[string]string{"bad": "{", "v2": `{"version": 2, "items": {}}`, "none": `{}`} {
		p := filepath.Join(dir, name+".json")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if found, err := readRecord(p, &r); !found || err == nil {
			t.Errorf("%s: found %v, err %v; want an error", name, found, err)
		}
	}
}
