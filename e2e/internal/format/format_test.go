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
		if got.Seq != seq || string(got.Sender) != "sensor-1" || string(got.Group) != "temps" || got.Epoch != 7 || got.ContentType != ContentTypeSign1 {
			t.Fatalf("got %+v", got)
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
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder(b)
		if d.Skip() == nil && d.Finish() == nil {
			// Well-formed: fine.
		}
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
