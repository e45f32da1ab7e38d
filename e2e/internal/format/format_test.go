package format

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{ContentType: ContentTypeSign1, Sender: []byte("sensor-1"), Seq: 0x1234, Group: []byte("temps"), Epoch: 7, TimeMillis: 1700000000000, TopicCheck: bytes.Repeat([]byte{9}, 8)}
	for _, seq := range []uint64{0, 1, 255, 256, 1<<64 - 1} {
		h.Seq = seq
		b := AppendHeader(nil, &h)
		got, err := ParseHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != seq || string(got.Sender) != "sensor-1" || string(got.Group) != "temps" || got.Epoch != 7 || got.ContentType != ContentTypeSign1 || got.Retained {
			t.Fatalf("got %+v", got)
		}
		r := h
		r.Retained = true
		if got, err := ParseHeader(AppendHeader(nil, &r)); err != nil || !got.Retained {
			t.Fatalf("retained marker: %v %+v", err, got)
		}
		if !bytes.Equal(AppendHeader(nil, &got), b) {
			t.Fatal("re-encoding differs")
		}
	}
}

func TestStrictDecoding(t *testing.T) {
	tests := []struct {
		name string
		hex  string
	}{
		{"non-shortest uint", "1817"},
		{"non-shortest uint16", "1900ff"},
		{"indefinite array", "9f00ff"},
		{"huge byte string length", "5bffffffffffffffff"},
		{"byte string longer than input", "4501"},
		{"array count beyond input", "9a7fffffff"},
		{"map keys out of order", "a2020001" + "00"},
		{"duplicate map keys", "a201000100"},
		{"float", "f93c00"},
		{"bad UTF-8", "62c328"},
		{"trailing bytes", "0000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := hex.DecodeString(tt.hex)
			d := NewDecoder(b)
			err := d.Skip()
			if err == nil {
				err = d.Finish()
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	ok := AppendEncrypt0(nil, []byte{0xa0}, make([]byte, 16))
	if _, _, err := ParseEncrypt0(ok); err != nil {
		t.Fatal(err)
	}
	bad := [][]byte{
		ok[1:],                     // untagged
		append(bytes.Clone(ok), 0), // trailing
		AppendTag(nil, TagSign1),   // wrong tag
		AppendTag(AppendArray(AppendTag(nil, 16), 3), 0), // garbage
	}
	for i, b := range bad {
		if _, _, err := ParseEncrypt0(b); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
	// An unprotected header must be empty.
	u := AppendTag(nil, TagEncrypt0)
	u = AppendArray(u, 3)
	u = AppendBytes(u, []byte{0xa0})
	u = AppendMap(u, 1)
	u = AppendInt(u, 5)
	u = AppendBytes(u, make([]byte, 12))
	u = AppendBytes(u, make([]byte, 16))
	if _, _, err := ParseEncrypt0(u); err == nil {
		t.Error("unprotected IV accepted")
	}
}

// FuzzFormat checks that the decoders never panic and are canonical: any
// input they accept re-encodes to exactly the same bytes.
func FuzzFormat(f *testing.F) {
	h := Header{Sender: []byte("s"), Seq: 3, Group: []byte("g"), Epoch: 1, TimeMillis: 5, TopicCheck: make([]byte, 8)}
	hb := AppendHeader(nil, &h)
	f.Add(hb)
	f.Add(AppendEncrypt0(nil, hb, make([]byte, 20)))
	sh := AppendSignHeader(nil, &SignHeader{Alg: AlgEdDSA, KID: []byte("k"), TimeMillis: 9, HasTime: true})
	f.Add(AppendSign1(nil, sh, []byte("payload"), make([]byte, 64)))
	f.Add(sh)
	h.ContentType, h.Sender, h.Group = ContentTypeSign1, bytes.Repeat([]byte("s"), 24), bytes.Repeat([]byte("g"), 300)
	h.Seq, h.Epoch, h.TimeMillis = 1<<40, 1<<33, -1<<40
	f.Add(AppendHeader(nil, &h))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder(b)
		if d.Skip() == nil && d.Finish() == nil {
			// Well-formed: fine.
		}
		checkFastHeader(t, b)
		checkFastEncrypt0(t, b)
		if h, err := ParseHeader(b); err == nil {
			if !bytes.Equal(AppendHeader(nil, &h), b) {
				t.Fatalf("header not canonical: %x", b)
			}
		}
		if p, c, err := ParseEncrypt0(b); err == nil {
			if !bytes.Equal(AppendEncrypt0(nil, p, c), b) {
				t.Fatalf("Encrypt0 not canonical: %x", b)
			}
		}
		if p, pl, s, err := ParseSign1(b); err == nil {
			if !bytes.Equal(AppendSign1(nil, p, pl, s), b) {
				t.Fatalf("Sign1 not canonical: %x", b)
			}
		}
		if sh, err := ParseSignHeader(b); err == nil {
			if !bytes.Equal(AppendSignHeader(nil, &sh), b) {
				t.Fatalf("sign header not canonical: %x", b)
			}
		}
	})
}

// checkFastHeader fails t unless the fast and the strict header decoders
// agree on b: both refuse it, or both accept it with the same fields.
func checkFastHeader(t testing.TB, b []byte) {
	t.Helper()
	var fh Header
	fok := parseHeaderFast(b, &fh)
	sh, err := parseHeaderStrict(b)
	switch {
	case fok && err != nil:
		t.Fatalf("fast header decoder accepts what the strict one refuses (%v): %x", err, b)
	case !fok && err == nil:
		t.Fatalf("fast header decoder refuses a valid header: %x", b)
	case fok && !sameHeader(fh, sh):
		t.Fatalf("header decoders disagree on %x:\nfast   %+v\nstrict %+v", b, fh, sh)
	}
}

func sameHeader(a, b Header) bool {
	return a.ContentType == b.ContentType && bytes.Equal(a.Sender, b.Sender) && a.Seq == b.Seq &&
		bytes.Equal(a.Group, b.Group) && a.Epoch == b.Epoch && a.TimeMillis == b.TimeMillis &&
		bytes.Equal(a.TopicCheck, b.TopicCheck) && a.Retained == b.Retained
}

// checkFastEncrypt0 is checkFastHeader for the envelope.
func checkFastEncrypt0(t testing.TB, b []byte) {
	t.Helper()
	fp, fc, fok := parseEncrypt0Fast(b)
	sp, sc, err := parseEncrypt0Strict(b)
	switch {
	case fok && err != nil:
		t.Fatalf("fast Encrypt0 decoder accepts what the strict one refuses (%v): %x", err, b)
	case !fok && err == nil:
		t.Fatalf("fast Encrypt0 decoder refuses a valid message: %x", b)
	case fok && (!bytes.Equal(fp, sp) || !bytes.Equal(fc, sc)):
		t.Fatalf("Encrypt0 decoders disagree on %x", b)
	}
}

// mutations returns b changed in many small ways: every byte replaced by a
// few values that matter to CBOR heads, truncated at every length, with a
// byte inserted at every position, and every byte read as a head with a
// small argument re-encoded in a non-canonical longer form.
func mutations(b []byte) [][]byte {
	var out [][]byte
	for i := range b {
		for _, v := range []byte{0x00, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x3a, 0x40, 0x48, 0x58, 0x59, 0xa0, 0xa7, 0xa8, 0xff, b[i] ^ 1, b[i] + 1, b[i] - 1} {
			if v == b[i] {
				continue
			}
			m := bytes.Clone(b)
			m[i] = v
			out = append(out, m)
		}
		out = append(out, bytes.Clone(b[:i]))
		out = append(out, append(append(bytes.Clone(b[:i]), 0x00), b[i:]...))
		if ai := b[i] & 0x1f; ai < 24 {
			top := b[i] & 0xe0
			out = append(out, append(append(bytes.Clone(b[:i]), top|24, ai), b[i+1:]...))
			out = append(out, append(append(bytes.Clone(b[:i]), top|25, 0, ai), b[i+1:]...))
		}
		// A one-, two- or four-byte argument widened to the next form.
		if ai := b[i] & 0x1f; ai >= 24 && ai <= 26 {
			n := 1 << (ai - 24)
			if i+1+n <= len(b) {
				wide := append([]byte{b[i] + 1}, make([]byte, n)...)
				wide = append(wide, b[i+1:i+1+n]...)
				out = append(out, append(append(bytes.Clone(b[:i]), wide...), b[i+1+n:]...))
			}
		}
	}
	return append(out, append(bytes.Clone(b), 0x00))
}

// TestFastPathsMatch checks the fast decoders against the strict ones on
// valid inputs of every length class and on many near-misses of them, so
// that the equivalence FuzzFormat explores is also checked on every run.
func TestFastPathsMatch(t *testing.T) {
	var headers [][]byte
	for _, ct := range []uint64{0, ContentTypeSign1} {
		for _, retained := range []bool{false, true} {
			h := Header{ContentType: ct, Retained: retained, Sender: []byte("s"), Group: []byte("g"), TopicCheck: make([]byte, TopicCheckLen)}
			headers = append(headers, AppendHeader(nil, &h))
		}
		for _, sender := range []int{1, 23, 24, 255} {
			for _, group := range []int{1, 23, 24, 255, 256, 1024} {
				for _, seq := range []uint64{0, 1, 23, 24, 255, 256, 1<<32 - 1, 1 << 32, 1<<64 - 1} {
					for _, epoch := range []uint64{0, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<64 - 1} {
						for _, ms := range []int64{0, 23, -24, 1700000000000, -1700000000000, 1<<63 - 1, -1 << 63} {
							h := Header{ContentType: ct, Sender: bytes.Repeat([]byte("s"), sender), Seq: seq,
								Group: bytes.Repeat([]byte("g"), group), Epoch: epoch, TimeMillis: ms, TopicCheck: make([]byte, TopicCheckLen)}
							headers = append(headers, AppendHeader(nil, &h))
						}
					}
				}
			}
		}
	}
	for _, b := range headers {
		if !parseHeaderFast(b, new(Header)) {
			t.Fatalf("fast path refuses a valid header: %x", b)
		}
		checkFastHeader(t, b)
	}
	// Near-misses of a few headers that together use every length form of
	// every field (mutating all of the above would take too long).
	for _, h := range []Header{
		{Sender: []byte("s"), Group: []byte("g"), Seq: 0, Epoch: 0, TimeMillis: 0},
		{ContentType: ContentTypeSign1, Sender: bytes.Repeat([]byte("s"), 24), Group: bytes.Repeat([]byte("g"), 256), Seq: 1 << 32, Epoch: 65536, TimeMillis: -1700000000000},
		{ContentType: ContentTypeSign1, Sender: bytes.Repeat([]byte("s"), 255), Group: bytes.Repeat([]byte("g"), 24), Seq: 1<<64 - 1, Epoch: 1 << 32, TimeMillis: 1<<63 - 1},
		{Sender: bytes.Repeat([]byte("s"), 23), Group: bytes.Repeat([]byte("g"), 1024), Seq: 256, Epoch: 300, TimeMillis: -1 << 63},
		{Sender: []byte("s"), Group: []byte("g"), Seq: 24, Epoch: 24, TimeMillis: 70000},
		{Sender: []byte("s"), Group: []byte("g"), Seq: 1, Epoch: 1, TimeMillis: 1, Retained: true},
		{ContentType: ContentTypeSign1, Sender: []byte("s"), Group: []byte("g"), Seq: 1, Epoch: 1, TimeMillis: 1, Retained: true},
	} {
		h.TopicCheck = []byte("12345678")
		for _, m := range mutations(AppendHeader(nil, &h)) {
			checkFastHeader(t, m)
		}
	}
	// Well-formed CBOR with a field out of bounds: refused by both.
	for _, bad := range []Header{
		{Sender: []byte("s"), Group: []byte{0xc3, 0x28}}, // group not UTF-8
		{Sender: []byte("s"), Group: nil},                // empty group
		{Sender: nil, Group: []byte("g")},                // empty sender
		{Sender: make([]byte, MaxSenderID+1), Group: []byte("g")},
		{Sender: []byte("s"), Group: make([]byte, MaxGroup+1)},
		{Sender: []byte("s"), Group: []byte("g"), TopicCheck: make([]byte, TopicCheckLen-1)},
		{Sender: []byte("s"), Group: []byte("g"), TopicCheck: make([]byte, TopicCheckLen+1)},
		{Sender: []byte("s"), Group: []byte("g"), ContentType: 17},
	} {
		if bad.TopicCheck == nil {
			bad.TopicCheck = make([]byte, TopicCheckLen)
		}
		b := AppendHeader(nil, &bad)
		if parseHeaderFast(b, new(Header)) {
			t.Errorf("fast path accepts an invalid header: %x", b)
		}
		checkFastHeader(t, b)
	}

	for _, plen := range []int{0, 1, 23, 24, 255, 256, 65536} {
		for _, clen := range []int{0, 16, 23, 24, 272, 65536} {
			b := AppendEncrypt0(nil, bytes.Repeat([]byte{0xa0}, plen), make([]byte, clen))
			if _, _, ok := parseEncrypt0Fast(b); !ok {
				t.Fatalf("fast path refuses a valid Encrypt0 (%d, %d)", plen, clen)
			}
			if plen < 300 && clen < 300 {
				for _, m := range mutations(b) {
					checkFastEncrypt0(t, m)
				}
			}
		}
	}
}
