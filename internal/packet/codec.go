package packet

import (
	"errors"
	"io"
)

// MaxPacketSizeLimit is the largest packet MQTT can express: a 4-byte
// remaining length of 268,435,455 plus the 5-byte fixed header.
const MaxPacketSizeLimit = 268435455 + 5

var errTODO = errors.New("packet: codec not implemented yet")

// Reader reads control packets from a byte stream. It is not safe for
// concurrent use.
type Reader struct {
	r       io.Reader
	max     uint32
	version Version
}

// NewReader returns a Reader that refuses packets larger than maxPacketSize
// bytes (whole packet, fixed header included) before allocating them; 0
// means MaxPacketSizeLimit.
func NewReader(r io.Reader, maxPacketSize uint32) *Reader {
	return &Reader{r: r, max: maxPacketSize}
}

// SetVersion sets the protocol version used to decode packets other than
// CONNECT (which carries its own). Before it is called, V311 rules apply.
func (r *Reader) SetVersion(v Version) { r.version = v }

// SetMaxPacketSize changes the size limit for subsequent packets.
func (r *Reader) SetMaxPacketSize(n uint32) { r.max = n }

// ReadPacket reads and decodes the next packet. It returns io.EOF when the
// stream ends cleanly before a packet starts, io.ErrUnexpectedEOF inside a
// packet, and an *Error for a packet that breaks the protocol.
func (r *Reader) ReadPacket() (Packet, error) { return nil, errTODO }

// Decode decodes the single packet at the start of b and returns it with
// the number of bytes it used. v is the session's protocol version (ignored
// for CONNECT); maxPacketSize as for NewReader.
func Decode(b []byte, v Version, maxPacketSize uint32) (Packet, int, error) { return nil, 0, errTODO }

// Append appends the canonical encoding of p for protocol version v to dst.
// It returns an *Error when p cannot be expressed in v or breaks a rule the
// encoder can check (invalid topic, property not allowed in this packet).
func Append(dst []byte, p Packet, v Version) ([]byte, error) { return dst, errTODO }

// Size returns the length in bytes of the encoding of p for version v, the
// figure compared with a peer's Maximum Packet Size.
func Size(p Packet, v Version) (int, error) { return 0, errTODO }
