package mosquittodb

import (
	"errors"
	"os"
	"testing"
	"time"
)

// FuzzParse: the reader never panics and never allocates more than the
// input warrants, every refusal is a FormatError pointing inside the
// input, and whatever it accepts converts to store operations. Seeds: the
// file Debian's mosquitto wrote (testdata/mosquitto-2.0.db), the sample
// file, and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile(goldenDB); err == nil {
		f.Add(b)
	}
	f.Add(sample())
	f.Add(newFile().cfg(1).chunk(99, []byte("x")).b)
	f.Fuzz(func(t *testing.T, b []byte) {
		db, err := Parse(b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Offset < 0 || fe.Offset > int64(len(b)) {
				t.Fatalf("error without a valid offset: %v", err)
			}
			return
		}
		n := uint64(0)
		Convert(db, ImportOptions{Now: time.Unix(1_800_000_000, 0), NextID: func() uint64 { n++; return n }})
	})
}
