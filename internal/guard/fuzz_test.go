package guard

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzBansFile: whatever the bans file holds, Read either refuses it or
// returns valid bans that survive a write and a second read unchanged.
func FuzzBansFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"bans":[{"id":"ab","kind":"ip","value":"10.0.0.0/8","reason":"r","source":"manual","created":"2026-01-01T00:00:00Z","expires":"2026-01-02T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"bans":[{"id":"cd","kind":"cert_serial","value":"00:0A","reason":"","source":"manual","created":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"bans":[]}`))
	f.Add([]byte(`{"version":1,"bans":[{"id":"ef","kind":"ip","value":"::ffff:1.2.3.4/120","reason":"","source":"x","created":"2026-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, BansFileName)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		file := File{Path: path, MaxBans: 100, MaxSize: 1 << 16}
		bans, err := file.Read()
		if err != nil {
			return
		}
		if err := file.write(bans); err != nil {
			t.Fatal(err)
		}
		again, err := file.Read()
		if err != nil {
			t.Fatalf("rewritten file refused: %v", err)
		}
		sortBans(bans)
		if len(bans) != len(again) || (len(bans) > 0 && !reflect.DeepEqual(normalizeTimes(bans), normalizeTimes(again))) {
			t.Fatalf("round trip changed the bans:\n%+v\n%+v", bans, again)
		}
	})
}

func normalizeTimes(b []Ban) []Ban {
	out := make([]Ban, len(b))
	for i, x := range b {
		x.Created = x.Created.Round(0).UTC()
		x.Expires = x.Expires.Round(0).UTC()
		out[i] = x
	}
	return out
}
