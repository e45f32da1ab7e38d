package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"time"
)

// VerifyOptions configure [Verify].
type VerifyOptions struct {
	// Keys are the trusted public keys (from [ReadPublicKeys]). Required.
	Keys *KeyRing

	// Live accepts an unverified end (entries after the last checkpoint,
	// a torn last line, no shutdown checkpoint) with a warning instead of
	// an error: for a log the broker is still writing.
	Live bool
}

// Report describes a verified log.
type Report struct {
	Files       int
	Entries     int
	Checkpoints int
	FirstSeq    uint64
	LastSeq     uint64
	Epochs      []uint64 // key epochs of the checkpoints, in order
	// LastCheckpointSeq and LastCheckpointTime describe the last valid
	// checkpoint; every entry up to it is verified.
	LastCheckpointSeq  uint64
	LastCheckpointTime time.Time
	// Unsigned counts the entries after the last checkpoint: they are
	// chained but not verified.
	Unsigned int
	Warnings []string
}

// Problem is the first bad entry [Verify] found.
type Problem struct {
	File string
	Line int    // 1-based line number in File
	Seq  uint64 // the entry's seq, or the expected one when it cannot be read
	Msg  string
	// Tail is true when the problem is an unverified end of the log (cut
	// after a checkpoint, torn by a crash, or still being written) rather
	// than a changed, removed, reordered or inserted entry.
	Tail bool
}

func (p *Problem) Error() string {
	return fmt.Sprintf("%s:%d: seq %d: %s", p.File, p.Line, p.Seq, p.Msg)
}

// Verify checks the log files given in order (oldest first, for example
// audit.log.2 audit.log.1 audit.log): every line is a canonical entry with
// a correct hash, each entry chains to the one before (across files too),
// seq numbers follow each other, every checkpoint is signed by the key of
// its epoch, the first epoch's key is in opts.Keys and every later one was
// introduced by a rotation checkpoint signed by the key before it, and the
// log ends with the checkpoint written at shutdown. It returns a *Problem
// naming the first bad entry; a Problem with Tail set is returned as a
// warning in the report instead when opts.Live is set.
func Verify(files []string, opts VerifyOptions) (*Report, error) {
	if opts.Keys == nil {
		return nil, errors.New("audit: verify needs the trusted public key")
	}
	if len(files) == 0 {
		return nil, errors.New("audit: verify needs at least one log file")
	}
	v := &verifier{opts: opts, keys: maps.Clone(opts.Keys.keys), rep: &Report{Files: len(files)}}
	for i, name := range files {
		if err := v.file(name, i, i == len(files)-1); err != nil {
			return v.rep, err
		}
	}
	if err := v.end(); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}

type verifier struct {
	opts     VerifyOptions
	keys     map[uint64]ed25519.PublicKey
	rep      *Report
	started  bool
	prevSeq  uint64
	prevHash string
	epoch    uint64 // current key epoch; 0 before the first checkpoint
	last     *Entry
	name     string
	line     int
}

func (v *verifier) bad(seq uint64, format string, args ...any) *Problem {
	return &Problem{File: v.name, Line: v.line, Seq: seq, Msg: fmt.Sprintf(format, args...)}
}

// tail reports an unverified end: an error, or a warning when Live.
func (v *verifier) tail(p *Problem) error {
	p.Tail = true
	if v.opts.Live {
		v.rep.Warnings = append(v.rep.Warnings, p.Error())
		return nil
	}
	return p
}

func (v *verifier) file(path string, index int, lastFile bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	v.name, v.line = filepath.Base(path), 0
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, complete, err := readLine(r)
		if err != nil {
			return fmt.Errorf("audit: reading %s: %w", path, err)
		}
		if line == nil {
			break
		}
		v.line++
		if !complete {
			if len(line) > MaxLineLen {
				return v.bad(v.prevSeq+1, "line longer than %d bytes: not an audit entry", MaxLineLen)
			}
			if !lastFile {
				return v.bad(v.prevSeq+1, "the file ends with a partial line, yet a later file follows it")
			}
			return v.tail(v.bad(v.prevSeq+1, "torn last line (%d bytes without a newline): a write interrupted by a crash or a cut; the entries before it are checked", len(line)))
		}
		if err := v.entry(line, index); err != nil {
			return err
		}
	}
	if v.line == 0 {
		return v.bad(v.prevSeq+1, "empty file")
	}
	if !lastFile && (v.last.Type != TypeCheckpoint || reasonOf(v.last) != "rotate") {
		return v.bad(v.last.Seq, "the file does not end with its rotation checkpoint, yet a later file follows it: entries were cut from its end")
	}
	return nil
}

// readLine returns the next line without its newline and whether it had
// one; nil at the end. Lines longer than MaxLineLen are cut there.
func readLine(r *bufio.Reader) ([]byte, bool, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], true, nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(line) > MaxLineLen {
				return line, false, nil
			}
		case errors.Is(err, io.EOF):
			if len(line) == 0 {
				return nil, false, nil
			}
			return line, false, nil
		default:
			return nil, false, err
		}
	}
}

func reasonOf(e *Entry) string {
	f, _ := e.Get("reason")
	return f.str
}

func (v *verifier) entry(line []byte, fileIndex int) error {
	e, err := ParseLine(line)
	switch {
	case errors.Is(err, ErrHash):
		return v.bad(e.Seq, "the entry was changed: its hash does not match its content")
	case err != nil:
		return v.bad(v.prevSeq+1, "not a valid entry, it was changed or inserted (%v)", err)
	}
	switch {
	case !v.started:
		if !(e.Seq == 1 && e.Prev == zeroHash) && e.Type != TypeFile {
			return v.bad(e.Seq, "the first entry is neither the start of the chain (seq 1) nor the start of a rotated file: entries before it were removed")
		}
		if e.Seq != 1 {
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s:%d: the chain starts at seq %d: the files before it were not given (or were rotated away)", v.name, v.line, e.Seq))
		}
		v.started = true
		v.rep.FirstSeq = e.Seq
	case e.Seq <= v.prevSeq:
		return v.bad(e.Seq, "out of order: seq %d follows seq %d (entries reordered or inserted)", e.Seq, v.prevSeq)
	case e.Seq > v.prevSeq+1:
		return v.bad(e.Seq, "seq jumps from %d to %d: %d entries removed, or entries reordered", v.prevSeq, e.Seq, e.Seq-v.prevSeq-1)
	case e.Prev != v.prevHash:
		return v.bad(e.Seq, "does not chain to the entry before it (seq %d): an entry was changed, inserted or removed", v.prevSeq)
	}
	if v.line == 1 && fileIndex > 0 && e.Type != TypeFile {
		return v.bad(e.Seq, "a file after the first must start with an %s entry: files given out of order, or the start of this file was cut", TypeFile)
	}
	if e.Type == TypeCheckpoint {
		if err := v.checkpoint(e); err != nil {
			return err
		}
	} else {
		v.rep.Unsigned++
	}
	v.rep.Entries++
	v.rep.LastSeq = e.Seq
	v.prevSeq, v.prevHash, v.last = e.Seq, e.Hash, e
	return nil
}

func (v *verifier) checkpoint(e *Entry) error {
	allowed := map[string]bool{"epoch": true, "key": true, "reason": true, "sig": true, "next_epoch": true, "next_key": true}
	for _, f := range e.Fields {
		if !allowed[f.Key] {
			return v.bad(e.Seq, "checkpoint has an unknown field %q: forged", f.Key)
		}
	}
	ef, ok1 := e.Get("epoch")
	kf, ok2 := e.Get("key")
	sf, ok3 := e.Get("sig")
	if !ok1 || !ok2 || !ok3 || !ef.isNum || ef.num <= 0 || kf.isNum || sf.isNum {
		return v.bad(e.Seq, "checkpoint lacks its epoch, key or signature")
	}
	epoch := uint64(ef.num)
	if v.epoch != 0 && epoch != v.epoch {
		return v.bad(e.Seq, "checkpoint signed with the key of epoch %d while the chain is at epoch %d: a retired key, or a key no rotation introduced", epoch, v.epoch)
	}
	pub, ok := v.keys[epoch]
	if !ok {
		return v.bad(e.Seq, "checkpoint signed with the key of epoch %d, which does not chain to the trusted key (epoch %d); pass the right audit.pub with --key", epoch, v.opts.Keys.anchor)
	}
	if kf.str != b64.EncodeToString(pub) {
		return v.bad(e.Seq, "checkpoint names a key of epoch %d that is not the trusted one: forged with another key", epoch)
	}
	sig, err := b64.DecodeString(sf.str)
	if err != nil {
		return v.bad(e.Seq, "checkpoint signature is not base64")
	}
	unsigned := *e
	unsigned.Fields = nil
	for _, f := range e.Fields {
		if f.Key != "sig" {
			unsigned.Fields = append(unsigned.Fields, f)
		}
	}
	if !ed25519.Verify(pub, checkpointMessage(unsigned.canonical(nil)), sig) {
		return v.bad(e.Seq, "checkpoint signature does not verify: the checkpoint was forged, or the entries before it were rewritten")
	}
	v.epoch = epoch
	nf, hasNext := e.Get("next_epoch")
	nk, hasKey := e.Get("next_key")
	if hasNext || hasKey {
		if !hasNext || !hasKey || !nf.isNum || nk.isNum || uint64(nf.num) != epoch+1 {
			return v.bad(e.Seq, "key rotation checkpoint must name next_epoch %d and next_key", epoch+1)
		}
		next, err := b64.DecodeString(nk.str)
		if err != nil || len(next) != ed25519.PublicKeySize {
			return v.bad(e.Seq, "key rotation names an invalid public key")
		}
		if known, ok := v.keys[epoch+1]; ok && !bytes.Equal(known, next) {
			return v.bad(e.Seq, "key rotation introduces a key for epoch %d that differs from the one in the public key file", epoch+1)
		}
		v.keys[epoch+1] = next
		v.epoch = epoch + 1
	}
	v.rep.Checkpoints++
	v.rep.Epochs = append(v.rep.Epochs, epoch)
	v.rep.LastCheckpointSeq, v.rep.LastCheckpointTime = e.Seq, e.Time
	v.rep.Unsigned = 0
	return nil
}

func (v *verifier) end() error {
	if v.rep.Checkpoints == 0 {
		return v.tail(v.bad(v.prevSeq, "no signed checkpoint: none of the %d entries is verified", v.rep.Entries))
	}
	if v.rep.Unsigned > 0 {
		return v.tail(v.bad(v.prevSeq, "%d entries after the last checkpoint (seq %d) are not signed: the log was cut, or the broker is still running or crashed", v.rep.Unsigned, v.rep.LastCheckpointSeq))
	}
	if r := reasonOf(v.last); r != "close" {
		return v.tail(v.bad(v.prevSeq, "the log ends with a %q checkpoint, not the one written at shutdown: it was cut at a checkpoint, or the broker is still running or crashed", r))
	}
	return nil
}
