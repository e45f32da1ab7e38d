package passwd

import (
	"strings"
	"testing"
)

// FuzzParseLines checks that the file parser never panics, that every hash
// it accepts is canonical (encoding it again gives the text it read, so no
// two spellings of one hash exist), and that an accepted file written back
// parses to the same users. Seeds are in testdata/fuzz/FuzzParseLines.
func FuzzParseLines(f *testing.F) {
	f.Add([]byte("alice:$7$101$KXtu3V9NYFSqGJjB$WfyRzmiaaA6jU+3Y+TD+LRGQep0YDUG90trLGqKLbxLrgVZGs3mwR085sa23c9vNqUR7XF5k2oh8JQzyz5MS8w==\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, allowPlain bool) {
		lines, err := parseLines("fuzz", data, allowPlain)
		if err != nil {
			if strings.Count(err.Error(), "\n") > maxErrors {
				t.Fatalf("more than %d problems reported", maxErrors)
			}
			return
		}
		var b strings.Builder
		users := 0
		for _, l := range lines {
			if l.user == "" {
				continue
			}
			users++
			if l.h != nil {
				if got := l.h.String(); got != l.raw {
					t.Fatalf("hash %q encodes back as %q", l.raw, got)
				}
				if l.h.mem > MaxArgon2Memory || l.h.iter > MaxPBKDF2Iterations {
					t.Fatalf("limits not enforced: %+v", l.h.params())
				}
			} else if !allowPlain {
				t.Fatal("plain-text line accepted")
			}
			b.WriteString(l.user + ":" + l.raw + "\n")
		}
		again, err := parseLines("again", []byte(b.String()), allowPlain)
		if err != nil {
			t.Fatalf("written back, the file does not parse: %v", err)
		}
		if len(again) != users {
			t.Fatalf("%d users, then %d", users, len(again))
		}
	})
}
