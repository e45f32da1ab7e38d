package format

import "encoding/binary"

// CBOR tags of the COSE structures (RFC 9052 §2).
const (
	TagEncrypt0 = 16
	TagSign1    = 18
)

// COSE header labels used by Moat. Positive labels are the registered ones
// (RFC 9052 §3.1, RFC 8613 §6.1); the negative ones are in the private-use
// range (below -65536) and are specific to Moat.
const (
	LabelAlg         = 1
	LabelContentType = 3
	LabelKID         = 4
	LabelPartialIV   = 6
	LabelKIDContext  = 10
	LabelEpoch       = -65537
	LabelTime        = -65538
	LabelTopicCheck  = -65539
	LabelRetained    = -65540
)

// COSE algorithm identifiers (IANA COSE Algorithms registry).
const (
	AlgA256GCM = 3
	AlgEdDSA   = -8
	AlgES256   = -7
)

// ContentTypeSign1 is the CoAP content format of application/cose;
// cose-type="cose-sign1": the plaintext of an Encrypt0 is a COSE_Sign1.
const ContentTypeSign1 = 18

// Size limits applied while decoding.
const (
	MaxSenderID   = 255
	MaxGroup      = 1024
	MaxPartialIV  = 8
	TopicCheckLen = 8
	MaxSignature  = 132
	MaxKID        = 64
)

// Header is the protected header of a Moat COSE_Encrypt0 message. Byte
// slices returned by ParseHeader alias the input.
type Header struct {
	ContentType uint64 // 0 when absent
	Sender      []byte // kid (4)
	Seq         uint64 // Partial IV (6), big-endian, shortest form
	Group       []byte // kid context (10), UTF-8
	Epoch       uint64
	TimeMillis  int64 // Unix milliseconds
	TopicCheck  []byte
	// Retained marks a message its sender sealed to be retained by the
	// broker (label -65540, value 1; absent otherwise).
	Retained bool
}

// AppendPartialIV appends the shortest big-endian encoding of seq (one byte
// at least), as OSCORE encodes a Partial IV.
func AppendPartialIV(b []byte, seq uint64) []byte {
	var tmp [8]byte
	binary.BigEndian.PutUint64(tmp[:], seq)
	i := 0
	for i < 7 && tmp[i] == 0 {
		i++
	}
	return append(b, tmp[i:]...)
}

// AppendHeader appends the canonical encoding of h as a CBOR map.
func AppendHeader(b []byte, h *Header) []byte {
	n := 7
	if h.ContentType != 0 {
		n++
	}
	if h.Retained {
		n++
	}
	b = AppendMap(b, n)
	b = AppendInt(b, LabelAlg)
	b = AppendInt(b, AlgA256GCM)
	if h.ContentType != 0 {
		b = AppendInt(b, LabelContentType)
		b = AppendUint(b, h.ContentType)
	}
	b = AppendInt(b, LabelKID)
	b = AppendBytes(b, h.Sender)
	b = AppendInt(b, LabelPartialIV)
	var piv [8]byte
	b = AppendBytes(b, AppendPartialIV(piv[:0], h.Seq))
	b = AppendInt(b, LabelKIDContext)
	b = AppendBytes(b, h.Group)
	b = AppendInt(b, LabelEpoch)
	b = AppendUint(b, h.Epoch)
	b = AppendInt(b, LabelTime)
	b = AppendInt(b, h.TimeMillis)
	b = AppendInt(b, LabelTopicCheck)
	b = AppendBytes(b, h.TopicCheck)
	if h.Retained {
		b = AppendInt(b, LabelRetained)
		b = AppendUint(b, 1)
	}
	return b
}

// ParseHeader decodes a protected header. Every field but the content type
// is required; unknown labels are refused.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if parseHeaderFast(b, &h) {
		return h, nil
	}
	return parseHeaderStrict(b)
}

// parseHeaderStrict is ParseHeader with the general decoder: the reference
// the fast path is tested against, and the source of precise errors.
func parseHeaderStrict(b []byte) (Header, error) {
	var h Header
	d := NewDecoder(b)
	n, err := d.Map()
	if err != nil {
		return h, err
	}
	var prev []byte
	seen := 0
	for i := 0; i < n; i++ {
		var label int64
		label, prev, err = d.MapKey(prev)
		if err != nil {
			return h, err
		}
		switch label {
		case LabelAlg:
			alg, err := d.Int()
			if err != nil {
				return h, err
			}
			if alg != AlgA256GCM {
				return h, errorf("unsupported content encryption algorithm %d (want A256GCM, 3)", alg)
			}
			seen |= 1
		case LabelContentType:
			ct, err := d.Uint()
			if err != nil {
				return h, err
			}
			if ct != ContentTypeSign1 {
				return h, errorf("unsupported content type %d", ct)
			}
			h.ContentType = ct
		case LabelKID:
			if h.Sender, err = d.Bytes(MaxSenderID); err != nil {
				return h, err
			}
			if len(h.Sender) == 0 {
				return h, errorf("empty sender ID")
			}
			seen |= 2
		case LabelPartialIV:
			piv, err := d.Bytes(MaxPartialIV)
			if err != nil {
				return h, err
			}
			if len(piv) == 0 || (len(piv) > 1 && piv[0] == 0) {
				return h, errorf("non-canonical partial IV")
			}
			for _, c := range piv {
				h.Seq = h.Seq<<8 | uint64(c)
			}
			seen |= 4
		case LabelKIDContext:
			g, err := d.Bytes(MaxGroup)
			if err != nil {
				return h, err
			}
			if len(g) == 0 || !validUTF8(g) {
				return h, errorf("group name is empty or not UTF-8")
			}
			h.Group = g
			seen |= 8
		case LabelEpoch:
			if h.Epoch, err = d.Uint(); err != nil {
				return h, err
			}
			seen |= 16
		case LabelTime:
			if h.TimeMillis, err = d.Int(); err != nil {
				return h, err
			}
			seen |= 32
		case LabelTopicCheck:
			if h.TopicCheck, err = d.Bytes(TopicCheckLen); err != nil {
				return h, err
			}
			if len(h.TopicCheck) != TopicCheckLen {
				return h, errorf("topic check must be %d bytes", TopicCheckLen)
			}
			seen |= 64
		case LabelRetained:
			v, err := d.Uint()
			if err != nil {
				return h, err
			}
			if v != 1 {
				return h, errorf("retained marker must be 1, got %d", v)
			}
			h.Retained = true
		default:
			return h, errorf("unknown header label %d", label)
		}
	}
	if seen != 127 {
		return h, errorf("protected header lacks a required field")
	}
	return h, d.Finish()
}

// AppendEncrypt0 appends a tagged COSE_Encrypt0 with an empty unprotected
// header.
func AppendEncrypt0(b, protected, ciphertext []byte) []byte {
	b = AppendTag(b, TagEncrypt0)
	b = AppendArray(b, 3)
	b = AppendBytes(b, protected)
	b = AppendMap(b, 0)
	return AppendBytes(b, ciphertext)
}

// ParseEncrypt0 splits a tagged COSE_Encrypt0 into its protected header
// bytes and ciphertext. The unprotected header must be empty.
func ParseEncrypt0(msg []byte) (protected, ciphertext []byte, err error) {
	if protected, ciphertext, ok := parseEncrypt0Fast(msg); ok {
		return protected, ciphertext, nil
	}
	return parseEncrypt0Strict(msg)
}

// parseEncrypt0Strict is ParseEncrypt0 with the general decoder.
func parseEncrypt0Strict(msg []byte) (protected, ciphertext []byte, err error) {
	d := NewDecoder(msg)
	if err := d.Tag(TagEncrypt0); err != nil {
		return nil, nil, err
	}
	if err := d.ArrayLen(3); err != nil {
		return nil, nil, err
	}
	if protected, err = d.Bytes(-1); err != nil {
		return nil, nil, err
	}
	n, err := d.Map()
	if err != nil {
		return nil, nil, err
	}
	if n != 0 {
		return nil, nil, errorf("unprotected header must be empty")
	}
	if ciphertext, err = d.Bytes(-1); err != nil {
		return nil, nil, err
	}
	return protected, ciphertext, d.Finish()
}

// AppendEncStructure appends the Enc_structure of RFC 9052 §5.3 for a
// COSE_Encrypt0: ["Encrypt0", protected, external_aad].
func AppendEncStructure(b, protected, externalAAD []byte) []byte {
	b = AppendArray(b, 3)
	b = AppendText(b, "Encrypt0")
	b = AppendBytes(b, protected)
	return AppendBytes(b, externalAAD)
}

// SignHeader is the protected header of a COSE_Sign1.
type SignHeader struct {
	Alg        int64
	KID        []byte
	TimeMillis int64 // present when HasTime
	HasTime    bool
}

// AppendSignHeader appends the canonical encoding of h.
func AppendSignHeader(b []byte, h *SignHeader) []byte {
	n := 2
	if h.HasTime {
		n++
	}
	b = AppendMap(b, n)
	b = AppendInt(b, LabelAlg)
	b = AppendInt(b, h.Alg)
	b = AppendInt(b, LabelKID)
	b = AppendBytes(b, h.KID)
	if h.HasTime {
		b = AppendInt(b, LabelTime)
		b = AppendInt(b, h.TimeMillis)
	}
	return b
}

// ParseSignHeader decodes a COSE_Sign1 protected header.
func ParseSignHeader(b []byte) (SignHeader, error) {
	var h SignHeader
	d := NewDecoder(b)
	n, err := d.Map()
	if err != nil {
		return h, err
	}
	var prev []byte
	seen := 0
	for i := 0; i < n; i++ {
		var label int64
		label, prev, err = d.MapKey(prev)
		if err != nil {
			return h, err
		}
		switch label {
		case LabelAlg:
			if h.Alg, err = d.Int(); err != nil {
				return h, err
			}
			if h.Alg != AlgEdDSA && h.Alg != AlgES256 {
				return h, errorf("unsupported signature algorithm %d", h.Alg)
			}
			seen |= 1
		case LabelKID:
			if h.KID, err = d.Bytes(MaxKID); err != nil {
				return h, err
			}
			seen |= 2
		case LabelTime:
			if h.TimeMillis, err = d.Int(); err != nil {
				return h, err
			}
			h.HasTime = true
		default:
			return h, errorf("unknown header label %d", label)
		}
	}
	if seen != 3 {
		return h, errorf("signature header lacks alg or kid")
	}
	return h, d.Finish()
}

// AppendSign1 appends a tagged COSE_Sign1 with an empty unprotected header
// and an attached payload.
func AppendSign1(b, protected, payload, signature []byte) []byte {
	b = AppendTag(b, TagSign1)
	b = AppendArray(b, 4)
	b = AppendBytes(b, protected)
	b = AppendMap(b, 0)
	b = AppendBytes(b, payload)
	return AppendBytes(b, signature)
}

// ParseSign1 splits a tagged COSE_Sign1.
func ParseSign1(msg []byte) (protected, payload, signature []byte, err error) {
	d := NewDecoder(msg)
	if err := d.Tag(TagSign1); err != nil {
		return nil, nil, nil, err
	}
	if err := d.ArrayLen(4); err != nil {
		return nil, nil, nil, err
	}
	if protected, err = d.Bytes(-1); err != nil {
		return nil, nil, nil, err
	}
	n, err := d.Map()
	if err != nil {
		return nil, nil, nil, err
	}
	if n != 0 {
		return nil, nil, nil, errorf("unprotected header must be empty")
	}
	if payload, err = d.Bytes(-1); err != nil {
		return nil, nil, nil, err
	}
	if signature, err = d.Bytes(MaxSignature); err != nil {
		return nil, nil, nil, err
	}
	return protected, payload, signature, d.Finish()
}

// AppendSigStructure appends the Sig_structure of RFC 9052 §4.4 for a
// COSE_Sign1: ["Signature1", protected, external_aad, payload].
func AppendSigStructure(b, protected, externalAAD, payload []byte) []byte {
	b = AppendArray(b, 4)
	b = AppendText(b, "Signature1")
	b = AppendBytes(b, protected)
	b = AppendBytes(b, externalAAD)
	return AppendBytes(b, payload)
}
