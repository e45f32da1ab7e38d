package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// role of a simulated client.
type role byte

const (
	roleIdle role = iota
	rolePub
	roleSub
)

// client is one simulated MQTT 3.1.1 connection. Its reader goroutine owns
// br and ack; the publisher goroutine owns out. Writes from both go
// straight to nc, whose Write is atomic per call (net and tls both lock).
type client struct {
	r     *run
	idx   int
	role  role
	id    string
	topic string // publish topic, or subscription filter
	tls   *tls.Config
	nc    net.Conn
	br    *bufio.Reader
	ack   []byte
	win   chan struct{} // QoS 1 window: one token per unacknowledged PUBLISH
	done  chan struct{} // closed when the reader returns
	seq   uint32        // publisher: sequence number of the last message
	// lastSeq, for a subscriber in closed loop, holds the last sequence
	// number seen from each client index.
	lastSeq []uint32
}

// readBufSize returns the read buffer for packets with payloads of n
// bytes: small buffers keep tens of thousands of idle clients cheap.
func readBufSize(n int) int {
	need := n + 512
	size := 2048
	for size < need {
		size *= 2
	}
	return size
}

// dial opens the TCP (and TLS) connection of client c and returns how long
// it took.
func (c *client) dial(ctx context.Context, cfg *tls.Config) (time.Duration, bool, error) {
	r := c.r
	d := net.Dialer{Timeout: r.cfg.ConnectTimeout}
	if r.cfg.SourceAddrs > 1 {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+c.idx%r.cfg.SourceAddrs))}
	}
	addr := r.cfg.Addr
	if c.role == roleSub && r.cfg.SubAddr != "" {
		addr = r.cfg.SubAddr
	}
	start := time.Now()
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, false, fmt.Errorf("bench: dial: %w", err)
	}
	resumed := false
	if cfg != nil {
		tc := tls.Client(nc, cfg)
		hctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			return 0, false, fmt.Errorf("bench: TLS handshake: %w", err)
		}
		resumed = tc.ConnectionState().DidResume
		nc = tc
	}
	c.nc = nc
	c.br = bufio.NewReaderSize(nc, readBufSize(r.cfg.PayloadSize+len(c.topic)))
	return time.Since(start), resumed, nil
}

// handshakeMQTT sends CONNECT (and SUBSCRIBE for subscribers) and waits
// for the answers; it returns the CONNECT → CONNACK latency.
func (c *client) handshakeMQTT() (time.Duration, error) {
	r := c.r
	c.nc.SetDeadline(time.Now().Add(r.cfg.ConnectTimeout))
	defer c.nc.SetDeadline(time.Time{})
	buf, err := packet.Append(make([]byte, 0, 128), &packet.Connect{
		Version: packet.V311, CleanStart: !r.cfg.Persistent, KeepAlive: r.keepAlive, ClientID: c.id,
	}, packet.V311)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := c.nc.Write(buf); err != nil {
		return 0, fmt.Errorf("bench: sending CONNECT: %w", err)
	}
	p, err := c.readPacket()
	if err != nil {
		return 0, fmt.Errorf("bench: reading CONNACK: %w", err)
	}
	ca, ok := p.(*packet.Connack)
	if !ok {
		return 0, fmt.Errorf("bench: expected CONNACK, got %v", p.Type())
	}
	if ca.ReasonCode != 0 {
		return 0, fmt.Errorf("bench: connection refused: %v", ca.ReasonCode)
	}
	lat := time.Since(start)
	if c.role != roleSub {
		return lat, nil
	}
	buf, err = packet.Append(buf[:0], &packet.Subscribe{PacketID: 1,
		Subscriptions: []packet.Subscription{{Filter: c.topic, QoS: r.cfg.QoS}}}, packet.V311)
	if err != nil {
		return 0, err
	}
	if _, err := c.nc.Write(buf); err != nil {
		return 0, fmt.Errorf("bench: sending SUBSCRIBE: %w", err)
	}
	p, err = c.readPacket()
	if err != nil {
		return 0, fmt.Errorf("bench: reading SUBACK: %w", err)
	}
	sa, ok := p.(*packet.Suback)
	if !ok || len(sa.ReasonCodes) != 1 || sa.ReasonCodes[0] >= 0x80 {
		return 0, fmt.Errorf("bench: subscription to %q refused", c.topic)
	}
	return lat, nil
}

// readPacket decodes one whole packet with the codec (used only during
// setup, where allocation does not matter).
func (c *client) readPacket() (packet.Packet, error) {
	b, err := c.frame()
	if err != nil {
		return nil, err
	}
	p, _, err := packet.Decode(b, packet.V311, 0)
	c.br.Discard(len(b))
	return p, err
}

var errTooLarge = errors.New("bench: packet larger than the read buffer")

// frame returns the next whole packet in the read buffer without copying;
// it stays valid until the caller discards it.
func (c *client) frame() ([]byte, error) {
	n := 2
	for {
		h, err := c.br.Peek(n)
		if err != nil {
			return nil, err
		}
		if h[n-1]&0x80 == 0 {
			break
		}
		if n == 5 {
			return nil, errors.New("bench: malformed remaining length")
		}
		n++
	}
	h, _ := c.br.Peek(n)
	rl, mul := 0, 1
	for _, b := range h[1:n] {
		rl += int(b&0x7F) * mul
		mul <<= 7
	}
	total := n + rl
	if total > c.br.Size() {
		return nil, errTooLarge
	}
	return c.br.Peek(total)
}

// readLoop handles everything the broker sends until the connection ends.
func (c *client) readLoop() {
	defer close(c.done)
	r := c.r
	for {
		b, err := c.frame()
		if err != nil {
			if !r.stopping.Load() && !errors.Is(err, net.ErrClosed) {
				r.noteErr("read", err)
				r.dropped.Add(1)
			}
			return
		}
		switch b[0] >> 4 {
		case byte(packet.PUBLISH):
			c.onPublish(b)
		case byte(packet.PUBACK):
			r.acked.Add(1)
			if !r.pubStopped.Load() {
				r.ackedInWindow.Add(1)
			}
			select {
			case <-c.win:
			default:
			}
		}
		c.br.Discard(len(b))
		if len(c.ack) > 0 && c.br.Buffered() == 0 {
			if _, err := c.nc.Write(c.ack); err != nil && !r.stopping.Load() {
				r.noteErr("write ack", err)
			}
			c.ack = c.ack[:0]
		}
	}
}

// onPublish records one delivery from the raw packet b.
func (c *client) onPublish(b []byte) {
	r := c.r
	now := time.Now()
	qos := (b[0] >> 1) & 3
	i := 1
	for b[i]&0x80 != 0 {
		i++
	}
	i++
	if len(b) < i+2 {
		r.noteErr("publish", errors.New("bench: short PUBLISH"))
		return
	}
	tl := int(binary.BigEndian.Uint16(b[i:]))
	i += 2 + tl
	if len(b) < i {
		r.noteErr("publish", errors.New("bench: PUBLISH topic longer than the packet"))
		return
	}
	if qos > 0 {
		if len(b) < i+2 {
			r.noteErr("publish", errors.New("bench: short PUBLISH"))
			return
		}
		c.ack = append(c.ack, byte(packet.PUBACK)<<4, 2, b[i], b[i+1])
		i += 2
	}
	payload := b[i:]
	if r.cfg.Encrypt != nil {
		m, err := r.cfg.Encrypt.Open("", payload)
		if err != nil {
			r.decryptErrs.Add(1)
			return
		}
		payload = m.Plaintext
	}
	if len(payload) < minPayload {
		r.foreign.Add(1)
		return
	}
	ts := int64(binary.BigEndian.Uint64(payload))
	if ts < r.startNanos || binary.BigEndian.Uint64(payload[8:]) != r.runID {
		r.foreign.Add(1) // not from this run
		return
	}
	credit := int64(1) // closed-loop reservations this delivery returns
	if c.lastSeq != nil {
		// Messages of one publisher arrive in order [MQTT-4.6.0-5]: what
		// a jump in its sequence skipped was lost, and the publishers'
		// reservations for it come back. One that arrives after a later
		// one was counted lost then, so it returns nothing now.
		from, seq := binary.BigEndian.Uint32(payload[16:]), binary.BigEndian.Uint32(payload[20:])
		if int(from) < len(c.lastSeq) {
			if last := c.lastSeq[from]; seq > last {
				credit += int64(seq - last - 1)
				c.lastSeq[from] = seq
			} else {
				credit = 0
				r.outOfOrder.Add(1)
			}
		}
	}
	r.delivered.Add(1)
	if !r.pubStopped.Load() {
		r.deliveredInWindow.Add(1)
	}
	r.latency.Record(time.Duration(now.UnixNano() - ts))
	if r.cfg.MaxBacklog > 0 && credit > 0 {
		r.release(credit)
	}
}

// publishLoop publishes until stop is closed or the deadline passes.
func (c *client) publishLoop(stop <-chan struct{}, start, deadline time.Time) {
	r := c.r
	cfg := &r.cfg
	plain := make([]byte, cfg.PayloadSize)
	for i := 16; i < len(plain); i++ {
		plain[i] = byte('a' + i%26)
	}
	binary.BigEndian.PutUint64(plain[8:], r.runID)
	binary.BigEndian.PutUint32(plain[16:], uint32(c.idx))
	p := &packet.Publish{QoS: cfg.QoS, Topic: c.topic, Payload: plain}
	out := make([]byte, 0, 64<<10)
	const maxBatch = 64
	pace := newPacer(cfg.MsgRate, start, c.idx, cfg.Pubs)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var pid uint16
	ends := make([]int, 0, maxBatch) // end offset of each packet in out
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		n, wait := pace.due(now, maxBatch)
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-stop:
				return
			case <-timer.C:
			}
			continue
		}
		out = out[:0]
		for k := 0; k < n; k++ {
			// The first message of a batch waits for room (closed loop)
			// and for the QoS 1 window; the others go only if both have
			// room now.
			if cfg.MaxBacklog > 0 {
				if k == 0 {
					if !r.reserve(stop, timer) {
						return
					}
				} else if !r.tryReserve() {
					break
				}
			}
			if cfg.QoS > 0 {
				if k == 0 {
					select {
					case c.win <- struct{}{}:
					case <-stop:
						if cfg.MaxBacklog > 0 {
							r.unreserve()
						}
						return
					}
				} else {
					select {
					case c.win <- struct{}{}:
					default:
						if cfg.MaxBacklog > 0 {
							r.unreserve()
						}
						k = n // window full: send what we have
						continue
					}
				}
				pid++
				if pid == 0 {
					pid = 1
				}
				p.PacketID = pid
			}
			c.seq++
			binary.BigEndian.PutUint32(plain[20:], c.seq)
			binary.BigEndian.PutUint64(plain, uint64(time.Now().UnixNano()))
			p.Payload = plain
			if cfg.Encrypt != nil {
				sealed, err := cfg.Encrypt.Seal(c.topic, plain)
				if err != nil {
					r.noteErr("seal", err)
					return
				}
				p.Payload = sealed
			}
			var err error
			if out, err = packet.Append(out, p, packet.V311); err != nil {
				r.noteErr("encode", err)
				return
			}
			ends = append(ends, len(out))
		}
		if len(out) == 0 {
			continue
		}
		// Count as sent the packets the connection took whole, before the
		// write returns: a fast broker may deliver them first.
		r.sent.Add(int64(len(ends)))
		n, err := c.nc.Write(out)
		if err != nil {
			unsent := 0
			for _, e := range ends {
				if e > n {
					unsent++
				}
			}
			r.sent.Add(-int64(unsent))
			if !r.pubStopped.Load() {
				r.noteErr("publish", err)
			}
			return
		}
		ends = ends[:0]
	}
}

// disconnect sends DISCONNECT and closes the connection.
func (c *client) disconnect() {
	if c.nc == nil {
		return
	}
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.nc.Write([]byte{byte(packet.DISCONNECT) << 4, 0})
	c.nc.Close()
}

// pacer spaces one publisher's messages at a fixed rate, the offered load
// of an open loop: the schedule runs on whatever the broker does, and a
// publisher that fell behind (a full QoS 1 window, a slow write) sends
// the messages due since in batches. Messages it skips because the window
// stays full are not sent later: offered minus accepted is what the broker
// refused to take in time.
type pacer struct {
	interval time.Duration // 0: no pacing, as fast as possible
	next     time.Time     // when the next message is due
}

// newPacer returns the pacer of publisher idx of pubs publishing rate
// messages per second from start; the publishers' schedules are spread
// over one interval so that they do not all send at once. A rate of 0
// means no pacing.
func newPacer(rate float64, start time.Time, idx, pubs int) pacer {
	p := pacer{next: start}
	if rate > 0 {
		p.interval = max(1, time.Duration(float64(time.Second)/rate))
		if pubs > 1 {
			p.next = start.Add(p.interval * time.Duration(idx%pubs) / time.Duration(pubs))
		}
	}
	return p
}

// due returns how many messages (1 to limit) are due at now and moves the
// schedule past them, or 0 and how long to wait for the next one.
func (p *pacer) due(now time.Time, limit int) (int, time.Duration) {
	if p.interval == 0 {
		return limit, 0
	}
	if now.Before(p.next) {
		return 0, p.next.Sub(now)
	}
	n := min(limit, 1+int(now.Sub(p.next)/p.interval))
	p.next = p.next.Add(time.Duration(n) * p.interval)
	return n, 0
}
