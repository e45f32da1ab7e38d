package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/moatmq/moat/internal/packet"
)

// NullForwarder is the ceiling of the side-by-side benchmark: it speaks
// just enough MQTT 3.1.1 framing to be driven by the load generator and
// relays every PUBLISH to the connections subscribed to its topic, with
// no broker logic at all: no authentication, no sessions, no retained
// messages, no QoS 1 towards subscribers (messages are forwarded at QoS 0
// and the publisher is acknowledged at once), filters matched only exactly
// or by a trailing "+" or "#" level, and a shared subscription treated as
// an ordinary one. Never expose it to anything but a benchmark.
//
// The zero value is ready; set TLS for a TLS listener. Serve may be
// called once.
type NullForwarder struct {
	// TLS, when non-nil, wraps accepted connections in TLS.
	TLS *tls.Config
	// Logger receives connection errors; nil discards.
	Logger *slog.Logger
	// ReadBuffer is the read buffer per connection, which bounds the
	// packet size. Default 64 KiB.
	ReadBuffer int

	mu    sync.RWMutex
	exact map[string][]*fwdConn
	wild  []fwdSub
}

type fwdSub struct {
	prefix string // filter without its last level ("a/b/" for "a/b/+")
	multi  bool   // '#': any depth
	c      *fwdConn
}

type fwdConn struct {
	nc   net.Conn
	mu   sync.Mutex
	out  []byte
	wake chan struct{}
}

// maxFwdQueue bounds the bytes waiting for one slow connection; beyond it
// messages are dropped, as QoS 0 allows.
const maxFwdQueue = 4 << 20

func (c *fwdConn) send(b []byte) {
	c.mu.Lock()
	if len(c.out)+len(b) <= maxFwdQueue {
		c.out = append(c.out, b...)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *fwdConn) writer(done <-chan struct{}) {
	var buf []byte
	for {
		select {
		case <-done:
			return
		case <-c.wake:
		}
		c.mu.Lock()
		buf, c.out = c.out, buf[:0]
		c.mu.Unlock()
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				c.nc.Close()
				return
			}
		}
	}
}

// Serve accepts connections on ln until ctx ends or ln fails.
func (f *NullForwarder) Serve(ctx context.Context, ln net.Listener) error {
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
	f.mu.Lock()
	f.exact = map[string][]*fwdConn{}
	f.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if f.TLS != nil {
			nc = tls.Server(nc, f.TLS)
		}
		wg.Go(func() {
			c := &fwdConn{nc: nc, wake: make(chan struct{}, 1)}
			done := make(chan struct{})
			stopConn := context.AfterFunc(ctx, func() { nc.Close() })
			go c.writer(done)
			err := f.handle(c)
			close(done)
			stopConn()
			nc.Close()
			f.remove(c)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				f.Logger.Debug("nullfwd: connection ended", "err", err)
			}
		})
	}
}

func (f *NullForwarder) handle(c *fwdConn) error {
	size := f.ReadBuffer
	if size <= 0 {
		size = 64 << 10
	}
	cl := &client{nc: c.nc, br: bufio.NewReaderSize(c.nc, size)}
	var fwd []byte
	for {
		b, err := cl.frame()
		if err != nil {
			return err
		}
		switch packet.Type(b[0] >> 4) {
		case packet.CONNECT:
			c.send([]byte{byte(packet.CONNACK) << 4, 2, 0, 0})
		case packet.SUBSCRIBE:
			p, _, err := packet.Decode(b, packet.V311, 0)
			if err != nil {
				return err
			}
			s := p.(*packet.Subscribe)
			ack := &packet.Suback{PacketID: s.PacketID}
			for _, sub := range s.Subscriptions {
				f.add(sub.Filter, c)
				ack.ReasonCodes = append(ack.ReasonCodes, 0)
			}
			out, _ := packet.Append(nil, ack, packet.V311)
			c.send(out)
		case packet.PUBLISH:
			qos := (b[0] >> 1) & 3
			i := 1
			for b[i]&0x80 != 0 {
				i++
			}
			i++
			if len(b) < i+2 {
				return errors.New("nullfwd: short PUBLISH")
			}
			tl := int(binary.BigEndian.Uint16(b[i:]))
			if len(b) < i+2+tl {
				return errors.New("nullfwd: short PUBLISH")
			}
			topic := b[i+2 : i+2+tl]
			body := i + 2 + tl
			if qos > 0 {
				if len(b) < body+2 {
					return errors.New("nullfwd: short PUBLISH")
				}
				c.send([]byte{byte(packet.PUBACK) << 4, 2, b[body], b[body+1]})
				body += 2
			}
			// Re-frame at QoS 0: header, topic, payload.
			rl := 2 + tl + len(b) - body
			fwd = append(fwd[:0], byte(packet.PUBLISH)<<4)
			for {
				d := byte(rl & 0x7F)
				rl >>= 7
				if rl > 0 {
					d |= 0x80
				}
				fwd = append(fwd, d)
				if rl == 0 {
					break
				}
			}
			fwd = append(fwd, b[i:i+2+tl]...)
			fwd = append(fwd, b[body:]...)
			f.forward(string(topic), fwd)
		case packet.PINGREQ:
			c.send([]byte{byte(packet.PINGRESP) << 4, 0})
		case packet.DISCONNECT:
			return nil
		}
		cl.br.Discard(len(b))
	}
}

func (f *NullForwarder) add(filter string, c *fwdConn) {
	if strings.HasPrefix(filter, "$share/") {
		if parts := strings.SplitN(filter, "/", 3); len(parts) == 3 {
			filter = parts[2]
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case filter == "#" || strings.HasSuffix(filter, "/#"):
		f.wild = append(f.wild, fwdSub{strings.TrimSuffix(filter, "#"), true, c})
	case filter == "+" || strings.HasSuffix(filter, "/+"):
		f.wild = append(f.wild, fwdSub{strings.TrimSuffix(filter, "+"), false, c})
	default:
		f.exact[filter] = append(f.exact[filter], c)
	}
}

func (f *NullForwarder) remove(c *fwdConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, cs := range f.exact {
		for i := 0; i < len(cs); i++ {
			if cs[i] == c {
				cs = append(cs[:i], cs[i+1:]...)
				i--
			}
		}
		if len(cs) == 0 {
			delete(f.exact, k)
		} else {
			f.exact[k] = cs
		}
	}
	f.wild = slices.DeleteFunc(f.wild, func(s fwdSub) bool { return s.c == c })
}

func (f *NullForwarder) forward(topic string, b []byte) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, c := range f.exact[topic] {
		c.send(b)
	}
	for _, s := range f.wild {
		if rest, ok := strings.CutPrefix(topic, s.prefix); ok && (s.multi || !strings.Contains(rest, "/")) {
			s.c.send(b)
		}
	}
}
