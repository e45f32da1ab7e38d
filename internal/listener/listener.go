// Package listener produces the net.Listeners the broker serves MQTT on: plain
// TCP, TLS, MQTT over WebSocket and over secure WebSocket, each optionally
// behind the PROXY protocol (v1 or v2) sent by a trusted load balancer.
//
// Every listener hands out connections that are a plain MQTT byte stream; the
// broker needs nothing transport-specific to read and write packets. What the
// broker may want to know about a connection (which listener, which transport,
// the real client address, the TLS state, what a TLS-terminating balancer said
// about the client certificate) is available through Info, or by type
// assertion on small interfaces so the broker does not have to import this
// package:
//
//	interface{ HandshakeContext(context.Context) error }   // *tls.Conn (TLS transport): handshake not yet done
//	interface{ ConnectionState() tls.ConnectionState }      // *tls.Conn and secure WebSocket conns
//	interface{ ProxyTLS() (*ProxyTLSInfo, bool) }           // TCP and WebSocket conns behind PROXY v2
//	interface{ NetConn() net.Conn }                         // unwrap to the next layer
//
// Accept never performs a slow step itself: the TLS handshake is left to the
// broker (so it runs under the broker's pre-CONNECT deadline), and the PROXY
// header read and the WebSocket upgrade run in per-connection goroutines
// bounded by timeouts and by Config.MaxPending; Accept returns connections as
// they become ready.
//
// See docs/design/listeners.md for the transports, the WebSocket framing
// choices and the PROXY protocol trust model.
package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Transport is the protocol stack a listener speaks below MQTT.
type Transport uint8

// Transports. The zero value is TCP.
const (
	TCP          Transport = iota // plain MQTT over TCP (conventionally port 1883)
	TLS                           // MQTT over TLS (conventionally port 8883)
	WebSocket                     // MQTT over WebSocket, ws://
	WebSocketTLS                  // MQTT over WebSocket over TLS, wss://
)

// String returns the name used in configuration and logs: "tcp", "tls", "ws"
// or "wss".
func (t Transport) String() string {
	switch t {
	case TCP:
		return "tcp"
	case TLS:
		return "tls"
	case WebSocket:
		return "ws"
	case WebSocketTLS:
		return "wss"
	}
	return fmt.Sprintf("Transport(%d)", uint8(t))
}

// ParseTransport parses the names String returns (case-insensitive), plus the
// aliases "mqtt" (tcp), "mqtts" and "ssl" (tls), "websocket"/"websockets" (ws) and
// "websockets-tls"/"websocket-tls" (wss).
func ParseTransport(s string) (Transport, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp", "mqtt":
		return TCP, nil
	case "tls", "mqtts", "ssl":
		return TLS, nil
	case "ws", "websocket", "websockets":
		return WebSocket, nil
	case "wss", "websocket-tls", "websockets-tls":
		return WebSocketTLS, nil
	}
	return 0, fmt.Errorf("listener: unknown transport %q (want tcp, tls, ws or wss)", s)
}

func (t Transport) usesTLS() bool       { return t == TLS || t == WebSocketTLS }
func (t Transport) usesWebSocket() bool { return t == WebSocket || t == WebSocketTLS }

// Defaults.
const (
	// DefaultMaxPending bounds the connections that are accepted but not yet
	// returned by Accept (reading a PROXY header or upgrading to WebSocket).
	DefaultMaxPending = 1024
)

// Config describes one listener. The zero value is not enough on its own
// (Address is required); every other field has a documented default. Listen
// does not modify the Config, and the Config may be reused.
type Config struct {
	// Name identifies the listener in logs, metrics and ConnInfo. Default:
	// "<transport>/<address>", for example "tls/0.0.0.0:8883".
	Name string

	// Address is the host:port to listen on. Required. Port 0 picks a free
	// port (tests); Listener.Addr reports the port chosen.
	Address string

	// Network is the socket domain: "tcp4" binds IPv4 only, "tcp6" IPv6
	// only (Mosquitto socket_domain ipv4/ipv6). Default ("" or "tcp"):
	// both, as the address allows.
	Network string

	// Transport is the protocol stack. Default (zero value): TCP.
	Transport Transport

	// TLS is the server TLS configuration; required for TLS and
	// WebSocketTLS, ignored (and rejected if set) for TCP and WebSocket so a
	// misconfiguration does not silently serve plain text. The policy
	// (versions, suites, client certificates, hot reload through
	// GetConfigForClient/GetCertificate) is built elsewhere; this package
	// never changes it, except that a secure WebSocket listener uses a clone
	// whose NextProtos is "http/1.1" (HTTP/2 cannot carry an upgrade).
	TLS *tls.Config

	// WebSocket configures the WebSocket and WebSocketTLS transports;
	// ignored for the others. The zero value is a secure default.
	WebSocket WebSocketConfig

	// Proxy enables the PROXY protocol (v1 and v2) on this listener. nil (the
	// default) means no PROXY protocol: the TCP peer is the client.
	Proxy *ProxyConfig

	// MaxPending bounds the connections accepted but not yet handed out by
	// Accept: those still sending their PROXY header or still upgrading to
	// WebSocket. A connection beyond the bound is closed at once. It does not
	// apply to plain TCP and TLS listeners without PROXY (their connections
	// are handed out immediately; the TLS handshake is the broker's).
	// Default: DefaultMaxPending.
	MaxPending int

	// Gate, when set, is asked about every connection as soon as its
	// client address is known (at accept, or after the PROXY header),
	// before anything else is done with it: no TLS, no WebSocket, no
	// keep-alive setting, no wrapping. false aborts the connection at once
	// with a reset (SO_LINGER 0), which leaves no FIN_WAIT or TIME_WAIT
	// state a flood could pile up; the client sees the connection reset,
	// possibly before its connect returns. It must be fast, must not
	// block, and must be safe for concurrent use; refusals are logged at
	// Debug only (its owner counts them). Default nil: every connection
	// proceeds.
	Gate func(remote net.Addr) bool

	// OnTLSError, when set, is told of every TLS handshake of a secure
	// WebSocket listener that failed (its HTTP server makes them; the TLS
	// transport's handshakes are the broker's, which counts them itself),
	// with the client's address and the handshake's error, so that they
	// are counted and logged with the broker's own. It is called once the
	// connection is closed, from the HTTP server's goroutine for it; it
	// must be safe for concurrent use and must not block. Default nil.
	OnTLSError func(remote net.Addr, err error)

	// KeepAlive is the TCP keep-alive period, set on the connections the
	// Gate admits. Default (0): the Go default (15s); negative disables TCP
	// keep-alives.
	KeepAlive time.Duration

	// Logger receives the listener's logs (rejected connections at Debug,
	// accept errors at Warn). nil means slog.Default(). Every record carries
	// listener=<Name>.
	Logger *slog.Logger
}

// Validate reports, all at once, every problem with cfg that Listen would
// refuse before binding a socket. It does not check whether the address is
// free.
func (cfg *Config) Validate() error { return cfg.validate() }

func (cfg *Config) validate() error {
	var errs []error
	if cfg.Address == "" {
		errs = append(errs, errors.New("listener: Address is required (host:port, for example 0.0.0.0:8883)"))
	} else if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		errs = append(errs, fmt.Errorf("listener: Address %q is not host:port: %w", cfg.Address, err))
	}
	switch cfg.Network {
	case "", "tcp", "tcp4", "tcp6":
	default:
		errs = append(errs, fmt.Errorf("listener: Network %q must be tcp, tcp4 (IPv4 only) or tcp6 (IPv6 only)", cfg.Network))
	}
	switch cfg.Transport {
	case TCP, TLS, WebSocket, WebSocketTLS:
	default:
		errs = append(errs, fmt.Errorf("listener: unknown transport %v", cfg.Transport))
	}
	if cfg.Transport.usesTLS() && cfg.TLS == nil {
		errs = append(errs, fmt.Errorf("listener: transport %v needs a TLS config (certificate and key)", cfg.Transport))
	}
	if !cfg.Transport.usesTLS() && cfg.TLS != nil {
		errs = append(errs, fmt.Errorf("listener: a TLS config is set but transport %v is plain text; use tls or wss", cfg.Transport))
	}
	if cfg.MaxPending < 0 {
		errs = append(errs, errors.New("listener: MaxPending must not be negative"))
	}
	if cfg.Transport.usesWebSocket() {
		errs = append(errs, cfg.WebSocket.validate()...)
	}
	if cfg.Proxy != nil {
		errs = append(errs, cfg.Proxy.validate()...)
	}
	return errors.Join(errs...)
}

// Listener is a net.Listener for one transport. It is safe for concurrent
// use. The caller owns it and must Close it; Close also closes every
// connection not yet returned by Accept. Connections returned by Accept
// belong to the caller and are not closed by Listener.Close.
type Listener struct {
	name      string
	transport Transport
	log       *slog.Logger
	base      *baseListener
	tlsConfig *tls.Config // TLS transport only
	ws        *wsServer   // WebSocket transports only
}

// Listen opens a listener as cfg describes. ctx bounds only the listen call
// itself (like net.ListenConfig.Listen); cancelling it later does not close
// the listener. All configuration problems are reported at once.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = cfg.Transport.String() + "/" + cfg.Address
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("listener", name)

	network := cfg.Network
	if network == "" {
		network = "tcp"
	}
	// Keep-alive is set on the connections the Gate admits, not by
	// accept: a refused socket then costs no setsockopt calls.
	lc := net.ListenConfig{KeepAlive: -1}
	raw, err := lc.Listen(ctx, network, cfg.Address)
	if err != nil {
		if network != "tcp" {
			return nil, fmt.Errorf("listener: %s: %w (network %s: does the address belong to that IP version, and is it free?)", name, err, network)
		}
		return nil, fmt.Errorf("listener: %s: %w (is the address free and the port allowed?)", name, err)
	}

	maxPending := cfg.MaxPending
	if maxPending == 0 {
		maxPending = DefaultMaxPending
	}
	l := &Listener{name: name, transport: cfg.Transport, log: logger}
	b := &baseListener{
		ln:        raw,
		name:      name,
		transport: cfg.Transport,
		log:       logger,
		done:      make(chan struct{}),
		conns:     make(map[*Conn]struct{}),
		keepAlive: cfg.KeepAlive,
	}
	if cfg.Proxy != nil {
		b.proxy = newProxyPolicy(cfg.Proxy)
	}
	b.gate = cfg.Gate
	if cfg.Proxy != nil || cfg.Transport.usesWebSocket() {
		b.pending = make(chan struct{}, maxPending)
	}
	if cfg.Transport.usesWebSocket() {
		b.upgradeTimeout = cfg.WebSocket.upgradeTimeout()
		// The HTTP server hands the connection over (hijack); the slot is
		// released when the upgrade completes, not when http.Server accepts.
		b.holdPending = true
	}
	b.start()
	l.base = b

	switch cfg.Transport {
	case TLS:
		l.tlsConfig = cfg.TLS
	case WebSocket, WebSocketTLS:
		l.ws = newWSServer(b, cfg, logger)
	}
	logger.Info("listener: listening", "transport", cfg.Transport.String(), "address", raw.Addr().String(),
		"proxy_protocol", cfg.Proxy != nil)
	if !cfg.Transport.usesTLS() && cfg.Proxy == nil && onNetwork(raw.Addr()) {
		logger.Warn("listener: INSECURE plain-text listener: passwords, tokens and payloads cross the network unencrypted",
			"transport", cfg.Transport.String(), "address", raw.Addr().String())
	}
	if cfg.Proxy != nil {
		for _, p := range cfg.Proxy.Trusted {
			if p.Bits() == 0 {
				logger.Warn("listener: PROXY protocol trusts every source; any client can claim any address and TLS identity",
					"trusted", p.String())
			}
		}
	}
	return l, nil
}

// onNetwork reports whether clients on other hosts can reach addr: a
// plain-text listener on a loopback address or a Unix socket is not
// reported (docs/configuration.md).
func onNetwork(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return !a.IP.IsLoopback()
	case *net.UnixAddr:
		return false
	}
	return true
}

// Accept waits for and returns the next connection ready for MQTT. For TLS it
// is a *tls.Conn whose handshake has NOT run yet (call HandshakeContext with a
// deadline); for WebSocketTLS the handshake is complete. Accept retries
// transient accept errors (such as running out of file descriptors) with a
// backoff and returns an error wrapping net.ErrClosed once the listener is
// closed.
func (l *Listener) Accept() (net.Conn, error) {
	if l.ws != nil {
		return l.ws.accept()
	}
	c, err := l.base.Accept()
	if err != nil {
		return nil, err
	}
	if l.transport == TLS {
		return tls.Server(c, l.tlsConfig), nil
	}
	return c, nil
}

// Close stops listening, closes every connection not yet returned by Accept
// and waits for the listener's goroutines to exit. Connections already
// returned by Accept are left open. Close is idempotent.
func (l *Listener) Close() error {
	var err error
	if l.ws != nil {
		err = l.ws.close()
	}
	if err2 := l.base.Close(); err == nil {
		err = err2
	}
	return err
}

// Addr returns the listening address (with the port chosen when Address used
// port 0).
func (l *Listener) Addr() net.Addr { return l.base.Addr() }

// Name returns the listener's name as used in logs and ConnInfo.
func (l *Listener) Name() string { return l.name }

// Transport returns the listener's transport.
func (l *Listener) Transport() Transport { return l.transport }

var _ net.Listener = (*Listener)(nil)

// errClosed is returned by Accept after Close.
var errClosed = fmt.Errorf("listener: closed: %w", net.ErrClosed)

// baseListener accepts TCP connections, wraps them in *Conn, applies the
// PROXY policy and the pending bound, and hands out ready connections.
type baseListener struct {
	ln        net.Listener
	name      string
	transport Transport
	log       *slog.Logger
	proxy     *proxyPolicy        // nil: no PROXY protocol
	gate      func(net.Addr) bool // Config.Gate; nil: none
	keepAlive time.Duration       // Config.KeepAlive

	pending        chan struct{} // semaphore of pending connections; nil: unbounded (not used)
	holdPending    bool          // keep the slot after Accept (WebSocket: released on upgrade)
	upgradeTimeout time.Duration // WebSocket: close a connection not upgraded by then

	ready chan *Conn // PROXY mode: connections whose header has been read
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	conns map[*Conn]struct{} // connections being prepared (PROXY header)
	wg    sync.WaitGroup     // header readers and the accept loop

	loopErr    atomic.Pointer[error]
	lastWarned atomic.Int64 // unix nanos of the last "pending full" warning
}

func (b *baseListener) start() {
	if b.proxy == nil {
		return
	}
	b.ready = make(chan *Conn)
	b.wg.Add(1)
	go b.acceptLoop()
}

func (b *baseListener) Addr() net.Addr { return b.ln.Addr() }

func (b *baseListener) Close() error {
	var err error
	b.once.Do(func() {
		close(b.done)
		err = b.ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return err
}

func (b *baseListener) closed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// Accept returns the next connection (a *Conn) ready for the layer above.
func (b *baseListener) Accept() (net.Conn, error) {
	for b.proxy != nil {
		select {
		case c := <-b.ready:
			if !b.admit(c) {
				continue
			}
			return c, nil
		case <-b.done:
			if p := b.loopErr.Load(); p != nil {
				return nil, *p
			}
			return nil, errClosed
		}
	}
	for {
		raw, err := b.acceptRaw()
		if err != nil {
			return nil, err
		}
		// The Gate runs before anything is built on the socket.
		if !b.pass(raw.RemoteAddr(), raw) {
			continue
		}
		b.setKeepAlive(raw)
		c := b.wrap(raw, nil)
		if !b.acquire(c) {
			continue
		}
		return c, nil
	}
}

// admit asks the Gate about c (whose client address is known from its
// PROXY header) and aborts c when it refuses.
func (b *baseListener) admit(c *Conn) bool {
	return b.pass(c.RemoteAddr(), c)
}

// pass asks the Gate about a connection from remote; when it refuses, the
// connection is aborted: closed with a reset (SO_LINGER 0), so that a
// refused socket leaves no state in the kernel (no FIN exchange, no
// FIN_WAIT or TIME_WAIT entry a flood could pile up). Refusals are logged
// at Debug only: the Gate's owner counts them, and a flood must not cost a
// log line each.
func (b *baseListener) pass(remote net.Addr, nc net.Conn) bool {
	if b.gate == nil || b.gate(remote) {
		return true
	}
	if b.log.Enabled(context.Background(), slog.LevelDebug) {
		b.log.Debug("listener: connection refused by the gate", "remote", remote.String())
	}
	abort(nc)
	return false
}

// abort closes nc with a reset when it is a TCP connection (or wraps one).
func abort(nc net.Conn) {
	var tc *net.TCPConn
	switch v := nc.(type) {
	case *net.TCPConn:
		tc = v
	case *Conn:
		tc, _ = v.Conn.(*net.TCPConn)
	}
	if tc != nil {
		tc.SetLinger(0)
	}
	nc.Close()
}

// setKeepAlive applies Config.KeepAlive to an admitted TCP connection as
// net.ListenConfig would have (0: Go's defaults; negative: off).
func (b *baseListener) setKeepAlive(nc net.Conn) {
	tc, ok := nc.(*net.TCPConn)
	if !ok || b.keepAlive < 0 {
		return
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: b.keepAlive})
}

// acceptRaw accepts one TCP connection, retrying transient errors with a
// backoff like net/http does, so one EMFILE does not end the listener.
func (b *baseListener) acceptRaw() (net.Conn, error) {
	var delay time.Duration
	for {
		raw, err := b.ln.Accept()
		if err == nil {
			return raw, nil
		}
		if b.closed() || errors.Is(err, net.ErrClosed) {
			return nil, errClosed
		}
		if delay == 0 {
			delay = 5 * time.Millisecond
		} else if delay *= 2; delay > time.Second {
			delay = time.Second
		}
		b.log.Warn("listener: accept failed; retrying", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-b.done:
			t.Stop()
			return nil, errClosed
		}
	}
}

// acquire takes a pending slot for c, or closes c when the bound is reached.
func (b *baseListener) acquire(c *Conn) bool {
	if b.pending == nil {
		return true
	}
	select {
	case b.pending <- struct{}{}:
		c.slot = b.pending
		if b.upgradeTimeout > 0 {
			c.startUpgradeTimer(b.upgradeTimeout)
		}
		return true
	default:
		now := time.Now().UnixNano()
		if last := b.lastWarned.Load(); now-last > int64(10*time.Second) && b.lastWarned.CompareAndSwap(last, now) {
			b.log.Warn("listener: too many connections pending (PROXY header or WebSocket upgrade); closing new ones",
				"max_pending", cap(b.pending), "remote", c.peer.String())
		}
		c.Close()
		return false
	}
}

func (b *baseListener) wrap(raw net.Conn, pi *ProxyInfo) *Conn {
	return &Conn{
		Conn:      raw,
		listener:  b.name,
		transport: b.transport,
		peer:      raw.RemoteAddr(),
		proxy:     pi,
	}
}

// acceptLoop runs in PROXY mode: it accepts, applies the trust policy and
// starts a header reader per trusted connection.
func (b *baseListener) acceptLoop() {
	defer b.wg.Done()
	for {
		raw, err := b.acceptRaw()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				b.loopErr.Store(&err)
			}
			return
		}
		trusted := b.proxy.trusted(raw.RemoteAddr())
		if !trusted && !b.proxy.passUntrusted {
			b.log.Debug("listener: connection refused: source is not a trusted PROXY sender",
				"remote", raw.RemoteAddr().String())
			raw.Close()
			continue
		}
		b.setKeepAlive(raw)
		c := b.wrap(raw, nil)
		if !b.acquire(c) {
			continue
		}
		b.mu.Lock()
		if b.closed() {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.prepare(c, trusted)
	}
}

// prepare reads the PROXY header of a trusted connection (untrusted ones in
// pass-through mode carry none) and hands the connection to Accept.
func (b *baseListener) prepare(c *Conn, trusted bool) {
	defer b.wg.Done()
	ok := false
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		if !ok {
			c.Close()
		}
	}()
	if trusted {
		if err := c.readProxyHeader(b.proxy.headerTimeout); err != nil {
			b.log.Debug("listener: connection refused: bad PROXY header",
				"remote", c.peer.String(), "err", err)
			return
		}
	}
	if !b.holdPending {
		c.releasePending()
	}
	select {
	case b.ready <- c:
		ok = true
	case <-b.done:
	}
}
