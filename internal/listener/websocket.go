package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// WebSocket defaults.
const (
	// DefaultWebSocketMaxMessageSize bounds one WebSocket message: the
	// broker's default 1 MiB maximum MQTT packet plus 4 KiB of headroom for
	// small packets sent in the same message.
	DefaultWebSocketMaxMessageSize = 1<<20 + 4<<10
	// DefaultWebSocketReadHeaderTimeout bounds the TLS handshake (wss) and
	// the reading of the HTTP upgrade request headers.
	DefaultWebSocketReadHeaderTimeout = 5 * time.Second
	// DefaultWebSocketUpgradeTimeout bounds the whole time from accept to a
	// completed upgrade (PROXY header, TLS, request, 101 response).
	DefaultWebSocketUpgradeTimeout = 10 * time.Second
	// DefaultWebSocketMaxHeaderBytes bounds the upgrade request's headers.
	DefaultWebSocketMaxHeaderBytes = 8 << 10

	// wsCloseGrace bounds Close: the close handshake gets this long before
	// the TCP connection is dropped.
	wsCloseGrace = time.Second
)

// Subprotocols the WebSocket listeners accept, in order of preference. MQTT
// 3.1.1 and 5.0 use "mqtt" [MQTT-6.0.0-3]; "mqttv3.1" is what MQTT 3.1
// clients (old Paho JavaScript and Python releases) offer.
var wsSubprotocols = []string{"mqtt", "mqttv3.1"}

// WebSocketConfig configures MQTT over WebSocket. The zero value accepts any
// path and any Origin, bounds messages to DefaultWebSocketMaxMessageSize and
// applies the default timeouts.
type WebSocketConfig struct {
	// Path, when set (for example "/mqtt"), is the only request path
	// upgraded; others get 404. Default "": any path, like Mosquitto.
	Path string

	// AllowedOrigins lists the browser origins allowed to connect, as host
	// patterns ("example.com", "*.example.com") or scheme://host patterns
	// matched with path.Match. A request whose Origin equals its Host and a
	// request without Origin are always allowed. Default (empty): any
	// origin. MQTT clients are not browsers and the broker authenticates
	// every client itself, so the Origin check only matters when browser
	// pages on other sites could reuse a browser's ambient credentials
	// (cookies, client certificates) against the broker.
	AllowedOrigins []string

	// MaxMessageSize bounds one WebSocket message (all its frames); a larger
	// message closes the connection with status 1009 (message too big).
	// Default: DefaultWebSocketMaxMessageSize. It does not bound MQTT packet
	// sizes: a packet may span several messages; the broker's own limit
	// applies to packets.
	MaxMessageSize int64

	// ReadHeaderTimeout: default DefaultWebSocketReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// UpgradeTimeout: default DefaultWebSocketUpgradeTimeout.
	UpgradeTimeout time.Duration
	// MaxHeaderBytes: default DefaultWebSocketMaxHeaderBytes.
	MaxHeaderBytes int

	// RequireSubprotocol refuses clients that offer no WebSocket subprotocol
	// at all. Default false: such clients are served (as Mosquitto does),
	// while clients that offer only other subprotocols are always refused.
	RequireSubprotocol bool
}

func (w *WebSocketConfig) validate() []error {
	var errs []error
	if w.Path != "" && (!strings.HasPrefix(w.Path, "/") || path.Clean(w.Path) != w.Path) {
		errs = append(errs, fmt.Errorf("listener: WebSocket path %q must be a clean absolute path such as /mqtt", w.Path))
	}
	for _, o := range w.AllowedOrigins {
		if _, err := path.Match(strings.ToLower(o), ""); err != nil || o == "" {
			errs = append(errs, fmt.Errorf("listener: WebSocket allowed origin %q is not a valid pattern", o))
		}
	}
	if w.MaxMessageSize < 0 || w.ReadHeaderTimeout < 0 || w.UpgradeTimeout < 0 || w.MaxHeaderBytes < 0 {
		errs = append(errs, errors.New("listener: WebSocket limits and timeouts must not be negative"))
	}
	return errs
}

func (w *WebSocketConfig) upgradeTimeout() time.Duration {
	return cmpOr(w.UpgradeTimeout, DefaultWebSocketUpgradeTimeout)
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

type connCtxKey struct{}

// wsServer runs an http.Server on the base listener and turns completed
// upgrades into connections for Accept.
type wsServer struct {
	base        *baseListener
	srv         *http.Server
	log         *slog.Logger
	path        string
	maxMsg      int64
	requireSub  bool
	acceptOpts  websocket.AcceptOptions
	ready       chan net.Conn
	done        chan struct{}
	serveDone   chan struct{}
	serveErr    atomic.Pointer[error]
	closeOnce   sync.Once
	handlerMu   sync.Mutex
	handlersOff bool
	handlers    sync.WaitGroup
}

func newWSServer(b *baseListener, cfg Config, logger *slog.Logger) *wsServer {
	wc := cfg.WebSocket
	s := &wsServer{
		base:       b,
		log:        logger,
		path:       wc.Path,
		maxMsg:     cmpOr(wc.MaxMessageSize, DefaultWebSocketMaxMessageSize),
		requireSub: wc.RequireSubprotocol,
		ready:      make(chan net.Conn),
		done:       make(chan struct{}),
		serveDone:  make(chan struct{}),
		acceptOpts: websocket.AcceptOptions{
			Subprotocols:    wsSubprotocols,
			CompressionMode: websocket.CompressionDisabled,
		},
	}
	if len(wc.AllowedOrigins) == 0 {
		s.acceptOpts.InsecureSkipVerify = true // any Origin: see WebSocketConfig.AllowedOrigins
	} else {
		s.acceptOpts.OriginPatterns = slices.Clone(wc.AllowedOrigins)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	rht := cmpOr(wc.ReadHeaderTimeout, DefaultWebSocketReadHeaderTimeout)
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: rht,
		IdleTimeout:       rht,
		MaxHeaderBytes:    cmpOr(wc.MaxHeaderBytes, DefaultWebSocketMaxHeaderBytes),
		Protocols:         protocols,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connCtxKey{}, c)
		},
	}
	var ln net.Listener = b
	if cfg.Transport == WebSocketTLS {
		ln = tls.NewListener(ln, wssTLSConfig(cfg.TLS))
		if onErr := cfg.OnTLSError; onErr != nil {
			s.srv.ConnState = func(c net.Conn, st http.ConnState) {
				tc, ok := c.(*tls.Conn)
				if st != http.StateClosed || !ok {
					return
				}
				// The HTTP server made the handshake first thing and
				// logs its failure only as text; a failed handshake keeps
				// its error, which asking again returns at once, typed
				// (the broker sorts failures by it), without touching
				// the connection.
				if err := tc.Handshake(); err != nil {
					onErr(c.RemoteAddr(), err)
				}
			}
		}
	}
	go func() {
		defer close(s.serveDone)
		err := s.srv.Serve(ln)
		if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener: WebSocket server stopped", "err", err)
			err = fmt.Errorf("listener: WebSocket server: %w", err)
			s.serveErr.Store(&err)
		}
		s.shutdown()
	}()
	return s
}

// wssTLSConfig returns a clone of cfg that negotiates only HTTP/1.1 by ALPN
// (an upgrade needs HTTP/1.1, and a "mqtt"-only NextProtos would make Go fail
// handshakes of WebSocket clients offering "http/1.1").
func wssTLSConfig(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	c.NextProtos = []string{"http/1.1"}
	if get := cfg.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			sub, err := get(hello)
			if sub == nil || err != nil {
				return sub, err
			}
			sub = sub.Clone()
			sub.NextProtos = []string{"http/1.1"}
			return sub, nil
		}
	}
	return c
}

func (s *wsServer) enter() bool {
	s.handlerMu.Lock()
	defer s.handlerMu.Unlock()
	if s.handlersOff {
		return false
	}
	s.handlers.Add(1)
	return true
}

// ServeHTTP upgrades one request and hands the connection to Accept.
func (s *wsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		http.Error(w, "listener closing", http.StatusServiceUnavailable)
		return
	}
	defer s.handlers.Done()

	rc, _ := r.Context().Value(connCtxKey{}).(net.Conn)
	base := baseConn(rc)
	if base == nil { // cannot happen: every conn comes from our base listener
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	logger := s.log.With("remote", base.RemoteAddr().String())
	if s.path != "" && r.URL.Path != s.path {
		logger.Debug("listener: WebSocket request for unknown path refused", "path", r.URL.Path)
		http.NotFound(w, r)
		return
	}
	offered := headerTokens(r.Header.Values("Sec-WebSocket-Protocol"))
	if len(offered) == 0 && s.requireSub || len(offered) > 0 && !slices.ContainsFunc(offered, isMQTTSubprotocol) {
		logger.Debug("listener: WebSocket client without mqtt subprotocol refused", "offered", offered)
		http.Error(w, "MQTT over WebSocket needs the \"mqtt\" subprotocol", http.StatusBadRequest)
		return
	}
	ws, err := websocket.Accept(w, r, &s.acceptOpts)
	if err != nil {
		// Accept has written the HTTP error (426, 403 on Origin, ...).
		logger.Debug("listener: WebSocket upgrade failed", "err", err)
		return
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	ws.SetReadLimit(s.maxMsg) // after NetConn, which disables the limit
	wc := &WebSocketConn{nc: nc, base: base, subprotocol: ws.Subprotocol(), path: r.URL.Path}
	if !base.stopUpgradeTimer() {
		ws.CloseNow()
		return
	}
	var out net.Conn = wc
	if r.TLS != nil {
		out = &SecureWebSocketConn{WebSocketConn: wc, state: *r.TLS}
	}
	select {
	case s.ready <- out:
		base.releasePending()
	case <-s.done:
		ws.CloseNow()
	}
}

func isMQTTSubprotocol(p string) bool { return slices.Contains(wsSubprotocols, p) }

func headerTokens(values []string) []string {
	var out []string
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

// baseConn finds the *Conn below a connection the HTTP server accepted.
func baseConn(c net.Conn) *Conn {
	switch x := c.(type) {
	case *Conn:
		return x
	case *tls.Conn:
		b, _ := x.NetConn().(*Conn)
		return b
	}
	return nil
}

func (s *wsServer) accept() (net.Conn, error) {
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.done:
		if p := s.serveErr.Load(); p != nil {
			return nil, *p
		}
		return nil, errClosed
	}
}

// shutdown stops handing out connections; idempotent.
func (s *wsServer) shutdown() {
	s.closeOnce.Do(func() { close(s.done) })
}

func (s *wsServer) close() error {
	s.shutdown()
	s.handlerMu.Lock()
	s.handlersOff = true
	s.handlerMu.Unlock()
	err := s.srv.Close() // closes the listener and every connection still in HTTP
	<-s.serveDone
	s.handlers.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// WebSocketConn is an MQTT-over-WebSocket connection as a byte stream: Read
// returns the payload of binary messages back to back (a packet may span
// messages, a message may hold several packets), each Write sends one binary
// message. A text message closes the connection with status 1003
// [MQTT-6.0.0-1]; a message over MaxMessageSize with status 1009.
//
// Deadlines: an expired read or write deadline while a Read or Write is
// blocked closes the whole connection (the WebSocket framing cannot be
// resumed mid-frame); the Read or Write then returns an error for which
// errors.Is(err, os.ErrDeadlineExceeded) holds and that is a net.Error with
// Timeout() true. Close sends a normal-closure close frame and waits at most
// one second for the peer's. Safe for concurrent use like any net.Conn.
type WebSocketConn struct {
	nc          net.Conn // websocket.NetConn
	base        *Conn
	subprotocol string
	path        string
	readDL      atomic.Pointer[time.Time]
	writeDL     atomic.Pointer[time.Time]
}

func (c *WebSocketConn) Read(p []byte) (int, error) {
	n, err := c.nc.Read(p)
	if err != nil {
		err = deadlineErr("read", err, c.readDL.Load())
	}
	return n, err
}

func (c *WebSocketConn) Write(p []byte) (int, error) {
	n, err := c.nc.Write(p)
	if err != nil {
		err = deadlineErr("write", err, c.writeDL.Load())
	}
	return n, err
}

// deadlineErr reports err as a timeout when the deadline has passed, as
// net.Conn callers expect.
func deadlineErr(op string, err error, dl *time.Time) error {
	if dl != nil && !dl.IsZero() && !time.Now().Before(*dl) {
		return &timeoutError{op: op, err: err}
	}
	return err
}

// timeoutError is a net.Error with Timeout() true that matches
// os.ErrDeadlineExceeded, like the errors of a TCP conn past its deadline.
type timeoutError struct {
	op  string
	err error
}

func (e *timeoutError) Error() string {
	return "listener: websocket " + e.op + ": i/o timeout (" + e.err.Error() + ")"
}
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() []error { return []error{os.ErrDeadlineExceeded, e.err} }

var _ net.Error = (*timeoutError)(nil)

// Close closes the connection with a normal-closure close frame.
func (c *WebSocketConn) Close() error {
	// Bound the close handshake: the peer may never answer.
	_ = c.base.SetDeadline(time.Now().Add(wsCloseGrace))
	err := c.nc.Close()
	c.base.Close()
	if err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)) {
		err = nil
	}
	return err
}

// LocalAddr returns the address the client connected to (after PROXY).
func (c *WebSocketConn) LocalAddr() net.Addr { return c.base.LocalAddr() }

// RemoteAddr returns the client address (after PROXY). Forwarding headers
// such as X-Forwarded-For are deliberately ignored: use the PROXY protocol.
func (c *WebSocketConn) RemoteAddr() net.Addr { return c.base.RemoteAddr() }

func (c *WebSocketConn) SetDeadline(t time.Time) error {
	c.readDL.Store(&t)
	c.writeDL.Store(&t)
	return c.nc.SetDeadline(t)
}

func (c *WebSocketConn) SetReadDeadline(t time.Time) error {
	c.readDL.Store(&t)
	return c.nc.SetReadDeadline(t)
}

func (c *WebSocketConn) SetWriteDeadline(t time.Time) error {
	c.writeDL.Store(&t)
	return c.nc.SetWriteDeadline(t)
}

// Subprotocol returns the negotiated subprotocol: "mqtt", "mqttv3.1", or ""
// when the client offered none.
func (c *WebSocketConn) Subprotocol() string { return c.subprotocol }

// Path returns the request path of the upgrade.
func (c *WebSocketConn) Path() string { return c.path }

// NetConn returns the *Conn below the WebSocket framing (and below TLS, for
// wss). Do not read or write it.
func (c *WebSocketConn) NetConn() net.Conn {
	return c.base
}

// ProxyTLS is Conn.ProxyTLS of the underlying connection.
func (c *WebSocketConn) ProxyTLS() (*ProxyTLSInfo, bool) { return c.base.ProxyTLS() }

// SecureWebSocketConn is a WebSocketConn over TLS (wss). The TLS handshake is
// complete when Accept returns it.
type SecureWebSocketConn struct {
	*WebSocketConn
	state tls.ConnectionState
}

// ConnectionState returns the TLS state of the connection, like
// (*tls.Conn).ConnectionState, so the broker reads the client's identity the
// same way for TLS and secure WebSocket.
func (c *SecureWebSocketConn) ConnectionState() tls.ConnectionState { return c.state }

var (
	_ net.Conn                                           = (*WebSocketConn)(nil)
	_ interface{ ConnectionState() tls.ConnectionState } = (*SecureWebSocketConn)(nil)
)
