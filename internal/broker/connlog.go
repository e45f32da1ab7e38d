package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// connLogHandler adds a connection's attributes (listener, remote address
// and, once known, client identifier) to each record it logs. It does what
// Logger.With does, but formats nothing until a record is logged:
// Logger.With pre-formats the attributes into a copy of the handler, which
// every connection would keep for its lifetime although an idle connection
// hardly ever logs.
type connLogHandler struct {
	h        slog.Handler
	listener string
	remote   net.Addr
	client   string // "" before CONNECT is accepted
}

// connLog is a connection's logger and its handler, allocated together:
// one object kept per connection rather than two.
type connLog struct {
	l slog.Logger
	h connLogHandler
}

// newConnLogger returns a logger for one connection; client may be empty.
func newConnLogger(base *slog.Logger, listener string, remote net.Addr, client string) *slog.Logger {
	cl := &connLog{h: connLogHandler{h: base.Handler(), listener: listener, remote: remote, client: client}}
	cl.l = *slog.New(&cl.h)
	return &cl.l
}

func (h *connLogHandler) attrs() []slog.Attr {
	remote := ""
	if h.remote != nil {
		remote = h.remote.String()
	}
	a := []slog.Attr{slog.String("listener", h.listener), slog.String("remote", remote)}
	if h.client != "" {
		a = append(a, slog.String("client", h.client))
	}
	return a
}

func (h *connLogHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

// Handle logs r with the connection's attributes first, where
// Logger.With would have put them.
func (h *connLogHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(h.attrs()...)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(a)
		return true
	})
	return h.h.Handle(ctx, out)
}

func (h *connLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return h.h.WithAttrs(h.attrs()).WithAttrs(as)
}

func (h *connLogHandler) WithGroup(name string) slog.Handler {
	return h.h.WithAttrs(h.attrs()).WithGroup(name)
}

// connEnd is why a connection ended, for its disconnect line.
type connEnd struct {
	code   packet.ReasonCode // the DISCONNECT sent, or the client's; 0 none
	reason string
}

// noteEnd records why the connection ends; the first reason noted wins,
// later ones (the clean-up that follows it) are ignored. With code 0 the
// reason is only logged, nothing is sent.
func (c *conn) noteEnd(code packet.ReasonCode, reason string) {
	if reason != "" {
		c.endedBy.CompareAndSwap(nil, &connEnd{code: code, reason: reason})
	}
}

// logViolation logs a packet the codec refused. A packet over
// MaxPacketSize is most often a legitimate but large message (a firmware
// image, a file sent with mosquitto_pub -f): its line is a warning that
// names the size, the limit and the setting to raise.
func (c *conn) logViolation(err error) {
	if errors.Is(err, packet.ErrPacketTooLarge) {
		c.log.Warn("broker: packet larger than max_packet_size; disconnecting", "err", err,
			"limit", c.srv.cfg.MaxPacketSize, "raise", "max_packet_size in mosquitto.conf, limits.max_packet_size in YAML")
		return
	}
	c.log.Info("broker: protocol violation; disconnecting", "err", err)
}

// clientDisconnectReason describes a DISCONNECT the client sent.
func clientDisconnectReason(code packet.ReasonCode) string {
	name := code.String()
	if code == packet.Success {
		name = "normal disconnection"
	}
	return fmt.Sprintf("client sent DISCONNECT (0x%02X %s)", byte(code), name)
}

// logDisconnect logs that an established connection ended and why, at the
// level of its connect line (info, or debug with QuietConnections).
func (c *conn) logDisconnect() {
	level := slog.LevelInfo
	if c.srv.cfg.QuietConnections {
		level = slog.LevelDebug
	}
	e := c.endedBy.Load()
	if e == nil {
		e = &connEnd{reason: "connection closed"}
	}
	attrs := []any{"reason", e.reason}
	if e.code != 0 {
		attrs = append(attrs, "code", fmt.Sprintf("0x%02X %s", byte(e.code), e.code))
	}
	if !c.connectedAt.IsZero() {
		attrs = append(attrs, "duration", c.srv.cfg.Now().Sub(c.connectedAt).Round(time.Millisecond))
	}
	c.log.Log(context.Background(), level, "broker: client disconnected", attrs...)
}
