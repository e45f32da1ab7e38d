package audit

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

func openLog(t *testing.T, cfg Config) *Log {
	t.Helper()
	testutil.CheckNoLeaks(t)
	if cfg.Now == nil {
		cfg.Now = testutil.NewSteppingClock(time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC), time.Millisecond).Now
	}
	l, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// writeLog writes n auth.failure events to a fresh log in dir with a
// checkpoint every 10 entries, and closes it.
func writeLog(t *testing.T, dir string, n int) string {
	t.Helper()
	l := openLog(t, Config{Dir: dir, CheckpointEvery: 10})
	for i := range n {
		l.Record(Event{Type: TypeAuthFailure, Fields: []Field{
			String("client_id", fmt.Sprintf("dev-%03d", i)),
			String("reason", "bad password"),
			String("addr", "127.0.0.2:5000"),
		}})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, DefaultFile)
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(data, []byte("\n"))[:bytes.Count(data, []byte("\n"))]
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustParse(t *testing.T, line []byte) *Entry {
	t.Helper()
	e, err := ParseLine(bytes.TrimSuffix(line, []byte("\n")))
	if err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	return e
}

func trusted(t *testing.T, dir string) *KeyRing {
	t.Helper()
	r, err := ReadPublicKeys(filepath.Join(dir, PubFile))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// verifyErr runs Verify and returns its *Problem (nil when it passed).
func verifyErr(t *testing.T, keys *KeyRing, live bool, files ...string) (*Report, *Problem) {
	t.Helper()
	rep, err := Verify(files, VerifyOptions{Keys: keys, Live: live})
	if err == nil {
		return rep, nil
	}
	p, ok := errors.AsType[*Problem](err)
	if !ok {
		t.Fatalf("Verify: %v (not a *Problem)", err)
	}
	return rep, p
}

func wantProblem(t *testing.T, p *Problem, line int, tail bool, msg string) {
	t.Helper()
	if p == nil {
		t.Fatalf("verify passed; want a problem at line %d (%s)", line, msg)
	}
	if p.Line != line || p.Tail != tail || !strings.Contains(p.Msg, msg) {
		t.Fatalf("problem %v (tail %v); want line %d, tail %v, %q", p, p.Tail, line, tail, msg)
	}
}

// rechain rewrites lines from index from on: each entry gets the right
// prev and hash, and checkpoints are re-signed with key (an attacker's
// forgery when key is not the log's). keyField, when set, is written as the
// checkpoints' key field.
func rechain(t *testing.T, lines [][]byte, from int, s *signer, keyField string) [][]byte {
	t.Helper()
	out := append([][]byte(nil), lines[:from]...)
	prev := zeroHash
	if from > 0 {
		prev = mustParse(t, lines[from-1]).Hash
	}
	for _, l := range lines[from:] {
		e, err := ParseLine(bytes.TrimSuffix(l, []byte("\n")))
		if err != nil && !errors.Is(err, ErrHash) {
			t.Fatal(err)
		}
		e.Prev = prev
		if e.Type == TypeCheckpoint {
			var fs []Field
			for _, f := range e.Fields {
				switch f.Key {
				case "sig":
				case "key":
					fs = append(fs, String("key", keyField))
				case "epoch":
					fs = append(fs, Int("epoch", int64(s.epoch)))
				default:
					fs = append(fs, f)
				}
			}
			e.Fields = fs
			sig := ed25519.Sign(s.priv, checkpointMessage(e.canonical(nil)))
			e.Fields = normalizeFields(append(e.Fields, String("sig", b64.EncodeToString(sig))))
		}
		out = append(out, e.seal(nil))
		prev = e.Hash
	}
	return out
}

func newSigner(t *testing.T, epoch uint64) *signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{epoch: epoch, priv: priv}
}
