package format

import (
	"encoding/binary"
	"math"
)

// Fast paths for the two structures every received message goes through,
// the COSE_Encrypt0 envelope and its protected header.
//
// The general Decoder builds an error value for every way an item can be
// wrong, which keeps each of its small methods out of line; decoding a
// message with it costs a few hundred nanoseconds, a large share of the
// cost of opening one. Both structures have a fixed shape, though: the
// envelope is always tag 16 around [bstr, {}, bstr], and because map keys
// must appear in strictly increasing order of their encoding and unknown
// labels are refused, a protected header has exactly one accepted key
// sequence (with or without the content type). The functions below read
// that shape straight through and only say "yes, and here are the fields"
// or "no". On "no" the callers run the general decoder, which either
// produces the precise error or — should the fast path ever be too picky —
// still accepts, so the fast path can only change speed, never the set of
// accepted inputs, provided it accepts nothing the general decoder refuses
// and returns the same fields. TestFastPathsMatch and FuzzFormat check
// exactly that, by comparing the two on every input they see.

// fastHead reads the canonical CBOR head at b[off:]: its major type, its
// argument and the offset just after it. ok is false on anything the
// general decoder would refuse: a truncated head, an indefinite length or
// reserved additional information, or an argument not in shortest form.
func fastHead(b []byte, off int) (major byte, arg uint64, next int, ok bool) {
	if off >= len(b) {
		return 0, 0, 0, false
	}
	ib := b[off]
	major, ai := ib>>5, ib&0x1f
	off++
	if ai < 24 {
		return major, uint64(ai), off, true
	}
	switch ai {
	case 24:
		if off+1 > len(b) || b[off] < 24 {
			return 0, 0, 0, false
		}
		return major, uint64(b[off]), off + 1, true
	case 25:
		if off+2 > len(b) {
			return 0, 0, 0, false
		}
		arg = uint64(binary.BigEndian.Uint16(b[off:]))
		if arg <= math.MaxUint8 {
			return 0, 0, 0, false
		}
		return major, arg, off + 2, true
	case 26:
		if off+4 > len(b) {
			return 0, 0, 0, false
		}
		arg = uint64(binary.BigEndian.Uint32(b[off:]))
		if arg <= math.MaxUint16 {
			return 0, 0, 0, false
		}
		return major, arg, off + 4, true
	case 27:
		if off+8 > len(b) {
			return 0, 0, 0, false
		}
		arg = binary.BigEndian.Uint64(b[off:])
		if arg <= math.MaxUint32 {
			return 0, 0, 0, false
		}
		return major, arg, off + 8, true
	}
	// 28–30 are reserved, 31 is an indefinite length.
	return 0, 0, 0, false
}

// fastBytes reads a canonical byte string of at most max bytes at b[off:]
// (max < 0: any length that fits in b). The result aliases b.
func fastBytes(b []byte, off, max int) (v []byte, next int, ok bool) {
	major, n, off, ok := fastHead(b, off)
	if !ok || major != majorBytes || n > uint64(len(b)-off) || (max >= 0 && n > uint64(max)) {
		return nil, 0, false
	}
	end := off + int(n)
	return b[off:end], end, true
}

// fastLabel reports whether b[off:] starts with the encoding of the map
// key enc and returns the offset after it.
func fastLabel(b []byte, off int, enc string) (int, bool) {
	if len(b)-off < len(enc) || string(b[off:off+len(enc)]) != enc {
		return 0, false
	}
	return off + len(enc), true
}

// Canonical encodings of the protected header's map keys and of the
// constant values that follow some of them. The private-use labels are
// negative integers whose argument (-1 - label = 65536…65539) needs the
// four-byte form, hence 0x3a.
const (
	encAlgA256GCM  = "\x01\x03"                 // 1: 3
	encContentType = "\x03\x12"                 // 3: 18
	encKID         = "\x04"                     // 4
	encPartialIV   = "\x06"                     // 6
	encKIDContext  = "\x0a"                     // 10
	encEpoch       = "\x3a\x00\x01\x00\x00"     // -65537
	encTime        = "\x3a\x00\x01\x00\x01"     // -65538
	encTopicCheck  = "\x3a\x00\x01\x00\x02"     // -65539
	encRetained    = "\x3a\x00\x01\x00\x03\x01" // -65540: 1
)

// parseHeaderFast decodes a protected header of the one shape ParseHeader
// accepts into *h, which must be the zero Header. It returns false, with
// *h in an unspecified state, whenever the input is anything else; it
// never returns true where parseHeaderStrict would fail.
func parseHeaderFast(b []byte, h *Header) bool {
	// A map of 7 pairs (0xa7), plus one for each of the content type
	// and the retained marker when present.
	if len(b) == 0 || b[0] < 0xa7 || b[0] > 0xa9 {
		return false
	}
	extra := int(b[0] - 0xa7)
	off, ok := fastLabel(b, 1, encAlgA256GCM)
	if !ok {
		return false
	}
	if next, ok := fastLabel(b, off, encContentType); ok {
		off = next
		h.ContentType = ContentTypeSign1
		extra--
	}
	if off, ok = fastLabel(b, off, encKID); !ok {
		return false
	}
	if h.Sender, off, ok = fastBytes(b, off, MaxSenderID); !ok || len(h.Sender) == 0 {
		return false
	}
	if off, ok = fastLabel(b, off, encPartialIV); !ok {
		return false
	}
	piv, off, ok := fastBytes(b, off, MaxPartialIV)
	if !ok || len(piv) == 0 || (len(piv) > 1 && piv[0] == 0) {
		return false
	}
	for _, c := range piv {
		h.Seq = h.Seq<<8 | uint64(c)
	}
	if off, ok = fastLabel(b, off, encKIDContext); !ok {
		return false
	}
	if h.Group, off, ok = fastBytes(b, off, MaxGroup); !ok || len(h.Group) == 0 || !validUTF8(h.Group) {
		return false
	}
	if off, ok = fastLabel(b, off, encEpoch); !ok {
		return false
	}
	major, arg, off, ok := fastHead(b, off)
	if !ok || major != majorUint {
		return false
	}
	h.Epoch = arg
	if off, ok = fastLabel(b, off, encTime); !ok {
		return false
	}
	major, arg, off, ok = fastHead(b, off)
	if !ok || arg > math.MaxInt64 {
		return false
	}
	switch major {
	case majorUint:
		h.TimeMillis = int64(arg)
	case majorNint:
		h.TimeMillis = -1 - int64(arg)
	default:
		return false
	}
	if off, ok = fastLabel(b, off, encTopicCheck); !ok {
		return false
	}
	if h.TopicCheck, off, ok = fastBytes(b, off, TopicCheckLen); !ok || len(h.TopicCheck) != TopicCheckLen {
		return false
	}
	if extra == 1 {
		if off, ok = fastLabel(b, off, encRetained); !ok {
			return false
		}
		h.Retained = true
	} else if extra != 0 {
		return false
	}
	if off != len(b) {
		return false
	}
	return true
}

// parseEncrypt0Fast splits a tagged COSE_Encrypt0 with an empty
// unprotected header. ok is false on anything ParseEncrypt0 would refuse
// (and possibly on more: the caller then asks the general decoder).
func parseEncrypt0Fast(msg []byte) (protected, ciphertext []byte, ok bool) {
	// 0xd0: tag 16; 0x83: array of 3 items.
	if len(msg) < 2 || msg[0] != 0xc0|TagEncrypt0 || msg[1] != 0x83 {
		return nil, nil, false
	}
	protected, off, ok := fastBytes(msg, 2, -1)
	// 0xa0: the empty unprotected header map.
	if !ok || off >= len(msg) || msg[off] != 0xa0 {
		return nil, nil, false
	}
	ciphertext, off, ok = fastBytes(msg, off+1, -1)
	if !ok || off != len(msg) {
		return nil, nil, false
	}
	return protected, ciphertext, true
}
