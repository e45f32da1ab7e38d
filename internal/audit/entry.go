package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on what one entry may hold. Values a peer controls (client IDs,
// usernames, topics) reach the log through fields, so every part is bounded.
const (
	MaxFields      = 64   // fields per entry; more are dropped and counted in "fields_dropped"
	MaxKeyLen      = 64   // bytes of a field key or an event type
	MaxValueLen    = 1024 // bytes of a string value; longer values are clipped
	MaxLineLen     = 1 << 20
	timeLayout     = "2006-01-02T15:04:05.000000000Z07:00"
	clippedMarker  = "...(clipped)"
	checkpointType = "audit.checkpoint"
)

// zeroHash is the prev of the first entry of a chain.
var zeroHash = strings.Repeat("0", 64)

// Field is one key/value pair of an event: a string or an integer. Build
// fields with [String] and [Int].
type Field struct {
	Key   string
	str   string
	num   int64
	isNum bool
}

// String returns a string field. Invalid UTF-8 is replaced and values
// longer than [MaxValueLen] bytes are clipped when the event is recorded.
func String(key, value string) Field { return Field{Key: key, str: value} }

// Int returns an integer field.
func Int(key string, value int64) Field { return Field{Key: key, num: value, isNum: true} }

// Value returns the field's value as a string or an int64.
func (f Field) Value() any {
	if f.isNum {
		return f.num
	}
	return f.str
}

// Event is what the caller records: a type from the documented set (see
// docs/audit.md) and flat fields. Decisions carry a "reason" field.
type Event struct {
	Type   string
	Fields []Field
}

// Entry is one line of the log as written and as read back by [Verify].
type Entry struct {
	Time   time.Time
	Seq    uint64
	Type   string
	Fields []Field // sorted by key, keys unique
	Prev   string  // lowercase hex SHA-256 of the previous entry's canonical form
	Hash   string  // lowercase hex SHA-256 of this entry's canonical form
}

// Get returns the value of field key and whether it is present.
func (e *Entry) Get(key string) (Field, bool) {
	i, ok := slices.BinarySearchFunc(e.Fields, key, func(f Field, k string) int { return strings.Compare(f.Key, k) })
	if !ok {
		return Field{}, false
	}
	return e.Fields[i], true
}

// canonical returns the canonical encoding of e without its hash: the JSON
// object {"time","seq","type","fields","prev"} in that order, fields sorted
// by key, strings escaped as appendString does, integers in decimal.
func (e *Entry) canonical(b []byte) []byte {
	b = append(b, `{"time":`...)
	b = appendString(b, e.Time.UTC().Format(timeLayout))
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"fields":{`...)
	for i, f := range e.Fields {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, f.Key)
		b = append(b, ':')
		if f.isNum {
			b = strconv.AppendInt(b, f.num, 10)
		} else {
			b = appendString(b, f.str)
		}
	}
	b = append(b, `},"prev":`...)
	b = appendString(b, e.Prev)
	return append(b, '}')
}

// seal sets e.Hash from the canonical form and returns the log line
// (canonical form with the hash added, and a newline), appended to b.
func (e *Entry) seal(b []byte) []byte {
	start := len(b)
	b = e.canonical(b)
	sum := sha256.Sum256(b[start:])
	e.Hash = hex.EncodeToString(sum[:])
	b = b[:len(b)-1]
	b = append(b, `,"hash":`...)
	b = appendString(b, e.Hash)
	return append(b, "}\n"...)
}

// appendString appends s as a JSON string: '"' and '\' are escaped with a
// backslash, bytes 0x00-0x1f and 0x7f as \u00xx (lowercase hex), all other
// bytes as they are. s must be valid UTF-8.
func appendString(b []byte, s string) []byte {
	const hexdig = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
			continue
		}
		b = append(b, s[start:i]...)
		if c == '"' || c == '\\' {
			b = append(b, '\\', c)
		} else {
			b = append(b, '\\', 'u', '0', '0', hexdig[c>>4], hexdig[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// validKey reports whether k may be a field key or an event type:
// 1 to MaxKeyLen bytes of [a-z0-9_.-].
func validKey(k string) bool {
	if k == "" || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// sanitizeKey maps k into the allowed alphabet so that a programming error
// never loses an event: upper case is lowered, anything else becomes '_'.
func sanitizeKey(k string) string {
	if validKey(k) {
		return k
	}
	if k == "" {
		return "_"
	}
	if len(k) > MaxKeyLen {
		k = k[:MaxKeyLen]
	}
	out := []byte(strings.ToLower(k))
	if len(out) > MaxKeyLen {
		out = out[:MaxKeyLen]
	}
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			out[i] = '_'
		}
	}
	return string(out)
}

// cleanValue makes s valid UTF-8 and at most MaxValueLen bytes.
func cleanValue(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= MaxValueLen {
		return s
	}
	cut := MaxValueLen - len(clippedMarker)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + clippedMarker
}

// normalizeFields returns the fields cleaned, sorted by key and with
// duplicate keys removed (the last one wins), at most MaxFields of them.
func normalizeFields(in []Field) []Field {
	out := make([]Field, 0, min(len(in)+1, MaxFields+1))
	for _, f := range in {
		f.Key = sanitizeKey(f.Key)
		if !f.isNum {
			f.str = cleanValue(f.str)
		}
		out = append(out, f)
	}
	slices.SortStableFunc(out, func(a, b Field) int { return strings.Compare(a.Key, b.Key) })
	// Keep the last of equal keys.
	dedup := out[:0]
	for i, f := range out {
		if i+1 < len(out) && out[i+1].Key == f.Key {
			continue
		}
		dedup = append(dedup, f)
	}
	if len(dedup) > MaxFields {
		dropped := int64(len(dedup) - (MaxFields - 1))
		dedup = dedup[:MaxFields-1]
		dedup = append(dedup, Int("fields_dropped", dropped))
		slices.SortFunc(dedup, func(a, b Field) int { return strings.Compare(a.Key, b.Key) })
	}
	return dedup
}

// Errors of [ParseLine].
var (
	ErrNotCanonical = errors.New("audit: entry is not in canonical form")
	ErrHash         = errors.New("audit: entry hash does not match its content")
)

// rawLine is the shape of a line for encoding/json; canonicity is checked
// afterwards by re-encoding and comparing bytes, so anything the decoder
// tolerates (duplicate keys, other key order, spaces, escapes) is refused.
type rawLine struct {
	Time   string                     `json:"time"`
	Seq    json.Number                `json:"seq"`
	Type   string                     `json:"type"`
	Fields map[string]json.RawMessage `json:"fields"`
	Prev   string                     `json:"prev"`
	Hash   string                     `json:"hash"`
}

// ParseLine parses one log line (without its newline) and checks that it
// is exactly the canonical encoding of its content and that its hash is
// right. It wraps [ErrNotCanonical] or [ErrHash]; with ErrHash it also
// returns the entry as read (its Hash is the computed one).
func ParseLine(line []byte) (*Entry, error) {
	if len(line) > MaxLineLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrNotCanonical, MaxLineLen)
	}
	var r rawLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotCanonical, err)
	}
	e := &Entry{Type: r.Type, Prev: r.Prev}
	var err error
	if e.Time, err = time.Parse(timeLayout, r.Time); err != nil {
		return nil, fmt.Errorf("%w: time: %v", ErrNotCanonical, err)
	}
	if e.Seq, err = strconv.ParseUint(r.Seq.String(), 10, 64); err != nil {
		return nil, fmt.Errorf("%w: seq: %v", ErrNotCanonical, err)
	}
	if !validKey(e.Type) || len(r.Fields) > MaxFields {
		return nil, fmt.Errorf("%w: type or number of fields", ErrNotCanonical)
	}
	for k, v := range r.Fields {
		if !validKey(k) || len(v) == 0 {
			return nil, fmt.Errorf("%w: field %q", ErrNotCanonical, k)
		}
		if v[0] == '"' {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, fmt.Errorf("%w: field %q: %v", ErrNotCanonical, k, err)
			}
			e.Fields = append(e.Fields, String(k, s))
			continue
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: field %q is neither a string nor an integer", ErrNotCanonical, k)
		}
		e.Fields = append(e.Fields, Int(k, n))
	}
	slices.SortFunc(e.Fields, func(a, b Field) int { return strings.Compare(a.Key, b.Key) })
	if !isHex64(r.Prev) || !isHex64(r.Hash) {
		return nil, fmt.Errorf("%w: prev and hash must be 64 lowercase hex digits", ErrNotCanonical)
	}
	c := e.canonical(make([]byte, 0, len(line)))
	want := append(c[:len(c)-1:len(c)-1], `,"hash":`...)
	want = appendString(want, r.Hash)
	want = append(want, '}')
	if !bytes.Equal(want, line) {
		return nil, ErrNotCanonical
	}
	sum := sha256.Sum256(c)
	if e.Hash = hex.EncodeToString(sum[:]); e.Hash != r.Hash {
		return e, ErrHash
	}
	return e, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
