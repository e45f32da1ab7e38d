package audit

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseLine checks the verifier's line parser: it never panics, and a
// line it accepts is exactly the canonical encoding of what it read (so no
// two spellings of one entry exist). Seeds: testdata/fuzz/FuzzParseLine.
func FuzzParseLine(f *testing.F) {
	e := &Entry{Type: TypeAuthFailure, Seq: 1, Prev: zeroHash, Fields: normalizeFields([]Field{String("reason", "bad \"password\"\n"), Int("n", -3)})}
	f.Add(bytes.TrimSuffix(e.seal(nil), []byte("\n")))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseLine(line)
		switch {
		case err == nil:
			if got := e.seal(nil); !bytes.Equal(got[:len(got)-1], line) {
				t.Fatalf("accepted a non-canonical line\n got %q\nwant %q", line, got)
			}
		case errors.Is(err, ErrHash):
			if e == nil {
				t.Fatal("ErrHash without the entry")
			}
			if c := e.canonical(nil); !bytes.HasPrefix(line, c[:len(c)-1]) {
				t.Fatalf("ErrHash for a line that is not canonical: %q", line)
			}
		case !errors.Is(err, ErrNotCanonical):
			t.Fatalf("unexpected error %v", err)
		}
	})
}
