package packet

import (
	"io"
)

// Writer encodes packets for one connection into a reused buffer and
// writes each with a single Write call. It is not safe for concurrent use;
// serialise writers of one connection.
type Writer struct {
	w       io.Writer
	buf     []byte
	version Version
	max     uint32
}

// NewWriter returns a Writer for w, encoding for MQTT 3.1.1 until
// SetVersion is called, without a size limit until SetMaxPacketSize is.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// SetVersion sets the protocol version packets are encoded for.
func (w *Writer) SetVersion(v Version) { w.version = v }

// SetMaxPacketSize sets the peer's Maximum Packet Size; 0 means none.
// WritePacket refuses larger packets [MQTT-3.1.2-24] [MQTT-3.2.2-15].
func (w *Writer) SetMaxPacketSize(n uint32) { w.max = n }

// WritePacket encodes p as Append does and writes it. A packet larger than
// the peer's maximum is not written and the error wraps ErrPacketTooLarge;
// the caller decides whether to drop the message (a server must, for
// PUBLISH) or to close the connection. Write errors are returned as they
// are.
func (w *Writer) WritePacket(p Packet) error {
	b, err := Append(w.buf[:0], p, w.version)
	if err != nil {
		return err
	}
	if cap(b) <= 64<<10 {
		w.buf = b // keep a modest buffer; drop the ones large packets grew
	}
	if w.max != 0 && uint64(len(b)) > uint64(w.max) {
		return tooLarge(p.Type(), uint64(len(b)), uint64(w.max))
	}
	_, err = w.w.Write(b)
	return err
}
