package broker

import (
	"context"
	"log/slog"
	"net"
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

// newConnLogger returns a logger for one connection; client may be empty.
func newConnLogger(base *slog.Logger, listener string, remote net.Addr, client string) *slog.Logger {
	return slog.New(&connLogHandler{h: base.Handler(), listener: listener, remote: remote, client: client})
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
