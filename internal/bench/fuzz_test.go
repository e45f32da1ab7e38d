package bench

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// FuzzFrames feeds arbitrary bytes, as a broker (or, for the null
// forwarder, a client) could send them, through the load generator's
// zero-copy framing and PUBLISH parsing and through the null forwarder's
// connection handler. Neither may panic or loop.
func FuzzFrames(f *testing.F) {
	pub, _ := packet.Append(nil, &packet.Publish{QoS: 1, PacketID: 3, Topic: "a/b", Payload: make([]byte, 20)}, packet.V311)
	conn, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: "x", CleanStart: true}, packet.V311)
	sub, _ := packet.Append(nil, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a/+"}}}, packet.V311)
	f.Add(pub)
	f.Add(append(append(conn, sub...), pub...))
	f.Add([]byte{0x32, 0x04, 0x00, 0x09, 'a', 'b'})
	f.Add([]byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F})
	f.Add([]byte{0x40, 0x02, 0x00, 0x01, 0xD0, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &run{cfg: Config{PayloadSize: 64}, errs: map[string]int{}}
		c := &client{r: r, br: bufio.NewReaderSize(bytes.NewReader(data), readBufSize(64))}
		for range 1000 {
			b, err := c.frame()
			if err != nil {
				break
			}
			if b[0]>>4 == byte(packet.PUBLISH) {
				c.onPublish(b)
			}
			c.br.Discard(len(b))
		}

		nf := &NullForwarder{exact: map[string][]*fwdConn{}, ReadBuffer: 4096}
		fc := &fwdConn{nc: fuzzConn{bytes.NewReader(data)}, wake: make(chan struct{}, 1)}
		nf.handle(fc)
		nf.remove(fc)
	})
}

// fuzzConn is a net.Conn that reads from r and discards writes.
type fuzzConn struct{ r io.Reader }

func (c fuzzConn) Read(p []byte) (int, error)     { return c.r.Read(p) }
func (fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (fuzzConn) Close() error                     { return nil }
func (fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (fuzzConn) SetDeadline(time.Time) error      { return nil }
func (fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (fuzzConn) SetWriteDeadline(time.Time) error { return nil }
