// Package format encodes and decodes the wire structures of Moat's
// end-to-end message security: a strict subset of deterministic CBOR
// (RFC 8949 §4.2.1) and the COSE structures built on it (RFC 9052
// COSE_Encrypt0 and COSE_Sign1).
//
// The decoder accepts only the canonical encoding: shortest-form integers
// and lengths, no indefinite lengths, no floats or simple values other than
// those a caller asks for, and map keys in strictly increasing bytewise
// order of their encoding. Every length is checked against the bytes that
// remain before anything is allocated, so a hostile length costs nothing.
// Decoding therefore has exactly one accepted input per value, which is
// what makes the encrypted and signed structures non-malleable.
package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// CBOR major types.
const (
	majorUint  = 0
	majorNint  = 1
	majorBytes = 2
	majorText  = 3
	majorArray = 4
	majorMap   = 5
	majorTag   = 6
	majorOther = 7
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed CBOR")

func errorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// appendHead appends a CBOR head with the shortest argument encoding.
func appendHead(b []byte, major byte, arg uint64) []byte {
	m := major << 5
	switch {
	case arg < 24:
		return append(b, m|byte(arg))
	case arg <= math.MaxUint8:
		return append(b, m|24, byte(arg))
	case arg <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(arg))
	case arg <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(arg))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), arg)
	}
}

// HeadLen returns the length of the head appendHead writes for arg: what a
// string of arg bytes, or an array of arg items, adds before its contents.
func HeadLen(arg uint64) int {
	switch {
	case arg < 24:
		return 1
	case arg <= math.MaxUint8:
		return 2
	case arg <= math.MaxUint16:
		return 3
	case arg <= math.MaxUint32:
		return 5
	default:
		return 9
	}
}

// AppendUint appends an unsigned integer.
func AppendUint(b []byte, v uint64) []byte { return appendHead(b, majorUint, v) }

// AppendInt appends a signed integer (major type 0 or 1).
func AppendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendHead(b, majorUint, uint64(v))
	}
	return appendHead(b, majorNint, uint64(-(v + 1)))
}

// AppendBytes appends a byte string.
func AppendBytes(b, v []byte) []byte { return append(appendHead(b, majorBytes, uint64(len(v))), v...) }

// AppendBytesHead appends the head of an n-byte string; the caller
// appends the n bytes.
func AppendBytesHead(b []byte, n int) []byte { return appendHead(b, majorBytes, uint64(n)) }

// AppendText appends a text string. The caller guarantees valid UTF-8.
func AppendText(b []byte, v string) []byte {
	return append(appendHead(b, majorText, uint64(len(v))), v...)
}

// AppendArray appends the head of an array of n items.
func AppendArray(b []byte, n int) []byte { return appendHead(b, majorArray, uint64(n)) }

// AppendMap appends the head of a map of n pairs.
func AppendMap(b []byte, n int) []byte { return appendHead(b, majorMap, uint64(n)) }

// AppendTag appends a tag head.
func AppendTag(b []byte, tag uint64) []byte { return appendHead(b, majorTag, tag) }

// AppendBool appends true or false.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xf5)
	}
	return append(b, 0xf4)
}

// Decoder reads canonical CBOR items from a byte slice. Slices it returns
// alias the input; callers that keep them must copy.
type Decoder struct {
	b   []byte
	off int
}

// NewDecoder returns a decoder over b.
func NewDecoder(b []byte) *Decoder { return &Decoder{b: b} }

// Done reports whether every byte has been consumed.
func (d *Decoder) Done() bool { return d.off == len(d.b) }

// Finish returns an error if bytes remain after the last item.
func (d *Decoder) Finish() error {
	if d.off != len(d.b) {
		return errorf("%d trailing bytes", len(d.b)-d.off)
	}
	return nil
}

// Remaining returns the number of unread bytes.
func (d *Decoder) Remaining() int { return len(d.b) - d.off }

// head reads one head and returns its major type and argument.
func (d *Decoder) head() (major byte, arg uint64, err error) {
	if d.off >= len(d.b) {
		return 0, 0, errorf("unexpected end of input")
	}
	ib := d.b[d.off]
	d.off++
	major, ai := ib>>5, ib&0x1f
	var n int
	switch {
	case ai < 24:
		return major, uint64(ai), nil
	case ai == 24:
		n = 1
	case ai == 25:
		n = 2
	case ai == 26:
		n = 4
	case ai == 27:
		n = 8
	default:
		return 0, 0, errorf("indefinite length or reserved value 0x%02x", ib)
	}
	if len(d.b)-d.off < n {
		return 0, 0, errorf("unexpected end of input")
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	switch n {
	case 1:
		arg = uint64(p[0])
		if arg < 24 {
			return 0, 0, errorf("non-canonical integer encoding")
		}
	case 2:
		arg = uint64(binary.BigEndian.Uint16(p))
		if arg <= math.MaxUint8 {
			return 0, 0, errorf("non-canonical integer encoding")
		}
	case 4:
		arg = uint64(binary.BigEndian.Uint32(p))
		if arg <= math.MaxUint16 {
			return 0, 0, errorf("non-canonical integer encoding")
		}
	case 8:
		arg = binary.BigEndian.Uint64(p)
		if arg <= math.MaxUint32 {
			return 0, 0, errorf("non-canonical integer encoding")
		}
	}
	return major, arg, nil
}

func (d *Decoder) expect(want byte, what string) (uint64, error) {
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != want {
		return 0, errorf("expected %s, found major type %d", what, major)
	}
	return arg, nil
}

// Uint reads an unsigned integer.
func (d *Decoder) Uint() (uint64, error) { return d.expect(majorUint, "unsigned integer") }

// Int reads a signed integer that fits in an int64.
func (d *Decoder) Int() (int64, error) {
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	if arg > math.MaxInt64 {
		return 0, errorf("integer out of range")
	}
	switch major {
	case majorUint:
		return int64(arg), nil
	case majorNint:
		return -1 - int64(arg), nil
	}
	return 0, errorf("expected integer, found major type %d", major)
}

func (d *Decoder) str(major byte, what string, max int) ([]byte, error) {
	n, err := d.expect(major, what)
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, errorf("%s length %d exceeds the %d bytes left", what, n, len(d.b)-d.off)
	}
	if max >= 0 && n > uint64(max) {
		return nil, errorf("%s length %d exceeds the limit of %d", what, n, max)
	}
	v := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return v, nil
}

// Bytes reads a byte string of at most max bytes (max < 0: no limit other
// than the input). The result aliases the input.
func (d *Decoder) Bytes(max int) ([]byte, error) { return d.str(majorBytes, "byte string", max) }

// Text reads a text string of at most max bytes and checks it is UTF-8.
func (d *Decoder) Text(max int) (string, error) {
	v, err := d.str(majorText, "text string", max)
	if err != nil {
		return "", err
	}
	if !validUTF8(v) {
		return "", errorf("text string is not valid UTF-8")
	}
	return string(v), nil
}

// Array reads an array head and returns its length, which is at most the
// number of bytes left (each item takes at least one byte).
func (d *Decoder) Array() (int, error) { return d.container(majorArray, "array", 1) }

// Map reads a map head and returns its number of pairs.
func (d *Decoder) Map() (int, error) { return d.container(majorMap, "map", 2) }

func (d *Decoder) container(major byte, what string, per uint64) (int, error) {
	n, err := d.expect(major, what)
	if err != nil {
		return 0, err
	}
	if n > uint64(len(d.b)-d.off)/per {
		return 0, errorf("%s of %d items exceeds the %d bytes left", what, n, len(d.b)-d.off)
	}
	return int(n), nil
}

// ArrayLen reads an array head and checks it has exactly n items.
func (d *Decoder) ArrayLen(n int) error {
	got, err := d.Array()
	if err != nil {
		return err
	}
	if got != n {
		return errorf("expected an array of %d items, found %d", n, got)
	}
	return nil
}

// Tag reads a tag head and checks it is want.
func (d *Decoder) Tag(want uint64) error {
	got, err := d.expect(majorTag, "tag")
	if err != nil {
		return err
	}
	if got != want {
		return errorf("expected tag %d, found %d", want, got)
	}
	return nil
}

// Bool reads true or false.
func (d *Decoder) Bool() (bool, error) {
	if d.off >= len(d.b) {
		return false, errorf("unexpected end of input")
	}
	switch d.b[d.off] {
	case 0xf4:
		d.off++
		return false, nil
	case 0xf5:
		d.off++
		return true, nil
	}
	return false, errorf("expected a boolean")
}

// MapKey reads an integer map key and checks that its encoding sorts
// strictly after prev, the encoding of the previous key (nil for the first
// key). It returns the key and its encoding, to pass as prev next time.
func (d *Decoder) MapKey(prev []byte) (int64, []byte, error) {
	start := d.off
	k, err := d.Int()
	if err != nil {
		return 0, nil, err
	}
	raw := d.b[start:d.off]
	if prev != nil && bytes.Compare(prev, raw) >= 0 {
		return 0, nil, errorf("map keys out of canonical order or duplicated")
	}
	return k, raw, nil
}

// Skip skips one well-formed canonical item of any type (depth-limited).
func (d *Decoder) Skip() error { return d.skip(0) }

func (d *Decoder) skip(depth int) error {
	if depth > 16 {
		return errorf("nesting too deep")
	}
	if d.off < len(d.b) && d.b[d.off]>>5 == majorOther {
		switch d.b[d.off] {
		case 0xf4, 0xf5, 0xf6:
			d.off++
			return nil
		}
		return errorf("unsupported simple value or float 0x%02x", d.b[d.off])
	}
	major, arg, err := d.head()
	if err != nil {
		return err
	}
	switch major {
	case majorUint, majorNint:
		return nil
	case majorBytes, majorText:
		if arg > uint64(len(d.b)-d.off) {
			return errorf("string length exceeds input")
		}
		if major == majorText && !validUTF8(d.b[d.off:d.off+int(arg)]) {
			return errorf("text string is not valid UTF-8")
		}
		d.off += int(arg)
		return nil
	case majorArray:
		if arg > uint64(len(d.b)-d.off) {
			return errorf("array length exceeds input")
		}
		for i := uint64(0); i < arg; i++ {
			if err := d.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case majorMap:
		if arg > uint64(len(d.b)-d.off)/2 {
			return errorf("map length exceeds input")
		}
		var prev []byte
		for i := uint64(0); i < arg; i++ {
			start := d.off
			if err := d.skip(depth + 1); err != nil {
				return err
			}
			raw := d.b[start:d.off]
			if prev != nil && bytes.Compare(prev, raw) >= 0 {
				return errorf("map keys out of canonical order or duplicated")
			}
			prev = raw
			if err := d.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case majorTag:
		return d.skip(depth + 1)
	}
	return errorf("unsupported major type %d", major)
}

func validUTF8(b []byte) bool { return utf8.Valid(b) }
