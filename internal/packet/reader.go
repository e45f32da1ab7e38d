package packet

import (
	"bufio"
	"errors"
	"io"
)

// Reader reads control packets from a byte stream. It is not safe for
// concurrent use.
//
// The Reader buffers its input (it wraps r in a bufio.Reader unless r is
// one already), so it may read beyond the current packet: once reading
// through a Reader has started, read the stream only through it.
type Reader struct {
	r       *bufio.Reader
	max     uint32
	version Version
	reserve func(size int) error
}

// NewReader returns a Reader that refuses packets larger than maxPacketSize
// bytes (whole packet, fixed header included) before allocating them; 0
// means MaxPacketSizeLimit.
func NewReader(r io.Reader, maxPacketSize uint32) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 4096)
	}
	return &Reader{r: br, max: maxPacketSize}
}

// SetVersion sets the protocol version used to decode packets other than
// CONNECT (which carries its own). Before it is called, and for values
// other than V31, V311 and V5, V311 rules apply.
// ReadPacket also sets it from a CONNECT it decodes successfully.
func (r *Reader) SetVersion(v Version) { r.version = v }

// SetMaxPacketSize changes the size limit for subsequent packets.
func (r *Reader) SetMaxPacketSize(n uint32) { r.max = n }

// SetReserve sets a function that ReadPacket calls with a packet's
// remaining length once the fixed header has been checked, before the
// body is read or allocated; it may wait (to bound the memory of packets
// being read at once). If it returns an error, ReadPacket returns that
// error unchanged and reads no further. nil (the default) means none.
func (r *Reader) SetReserve(f func(size int) error) { r.reserve = f }

// chunk is the largest body the Reader allocates before the bytes have
// arrived. Larger bodies grow as data comes in, so a peer that announces a
// large packet and stalls makes the Reader commit memory only for what it
// actually sent.
const chunk = 64 << 10

// ReadPacket reads and decodes the next packet. It returns io.EOF when the
// stream ends cleanly before a packet starts, io.ErrUnexpectedEOF inside a
// packet, other errors of the underlying reader unchanged, and an *Error
// for a packet that breaks the protocol: wrapping ErrMalformed or
// ErrProtocol, or ErrPacketTooLarge (detected from the fixed header,
// before the body is read or allocated).
//
// When decoding a CONNECT fails after its protocol level was read, the
// partially decoded *Connect, with only ProtocolName and Version set, is
// returned together with the error, so that the server can answer with a
// CONNACK of the client's version; Code is UnsupportedProtocolVersion
// (wrapping ErrUnsupportedVersion) for an unknown protocol name or level.
// For every other error the packet is nil.
//
// Each packet's body is allocated for that packet alone and byte slices in
// the packet alias it; the Reader never reuses it, so packets stay valid
// after later calls.
func (r *Reader) ReadPacket() (Packet, error) {
	b0, err := r.r.ReadByte()
	if err != nil {
		return nil, err
	}
	t, flags := Type(b0>>4), b0&0x0F
	var hdr [4]byte
	n := 0
	for {
		c, err := r.r.ReadByte()
		if err != nil {
			return nil, unexpected(err)
		}
		hdr[n] = c
		n++
		if c&0x80 == 0 || n == 4 {
			break
		}
	}
	rl, _, st := parseVBI(hdr[:n])
	if st != vbiOK {
		return nil, vbiError(t, "remaining length", st)
	}
	v := r.version
	if v != V31 && v != V5 {
		v = V311
	}
	if err := checkHeader(t, flags, v); err != nil {
		return nil, err
	}
	total := 1 + uint64(n) + uint64(rl)
	if max := limit(r.max); total > uint64(max) {
		return nil, tooLarge(t, total, uint64(max))
	}
	if r.reserve != nil && rl > 0 {
		if err := r.reserve(int(rl)); err != nil {
			return nil, err
		}
	}
	var body []byte
	if rl > 0 {
		if body, err = r.readBody(int(rl)); err != nil {
			return nil, err
		}
	}
	p, err := decodeBody(t, flags, body, v)
	if c, ok := p.(*Connect); ok && err == nil {
		r.version = c.Version
	}
	return p, err
}

// readBody reads exactly n bytes into a new slice of capacity n.
func (r *Reader) readBody(n int) ([]byte, error) {
	if n <= chunk {
		body := make([]byte, n)
		if _, err := io.ReadFull(r.r, body); err != nil {
			return nil, unexpected(err)
		}
		return body, nil
	}
	body := make([]byte, chunk)
	if _, err := io.ReadFull(r.r, body); err != nil {
		return nil, unexpected(err)
	}
	for len(body) < n {
		grow := min(2*len(body), n)
		nb := make([]byte, grow)
		copy(nb, body)
		if _, err := io.ReadFull(r.r, nb[len(body):]); err != nil {
			return nil, unexpected(err)
		}
		body = nb
	}
	return body, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// BufferedPacket returns the length of the next packet, fixed header
// included, when the Reader's buffer already holds all of it, so that
// ReadPacket will not read from the underlying reader (it may still call
// the reserve function); otherwise, and for a fixed header ReadPacket
// would refuse, it returns 0. It never reads from the underlying reader.
func (r *Reader) BufferedPacket() int {
	n := r.r.Buffered()
	if n < 2 {
		return 0
	}
	b, _ := r.r.Peek(min(n, 5))
	rl, l, st := parseVBI(b[1:])
	if st != vbiOK {
		return 0
	}
	if total := 1 + l + int(rl); total <= n {
		return total
	}
	return 0
}
