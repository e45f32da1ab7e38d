package ldap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/authn"
)

// dial connects and secures a connection (LDAPS or StartTLS), within
// Timeout and ctx. The caller must Close the result.
func (b *Backend) dial(ctx context.Context) (*goldap.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, b.unavailable("connect", err)
	}
	var nc net.Conn = raw
	if b.ldaps {
		tc := tls.Client(raw, b.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, b.unavailable("TLS handshake with "+b.addr+" (check ca_file and the server name)", err)
		}
		nc = tc
	}
	c := goldap.NewConn(nc, b.ldaps)
	c.Start()
	if b.startTLS {
		// The library's StartTLS takes no context: bound it with a
		// deadline on the socket, cleared once the handshake is done.
		dl, _ := ctx.Deadline()
		_ = raw.SetDeadline(dl)
		err := c.StartTLS(b.tls)
		_ = raw.SetDeadline(time.Time{})
		if err != nil {
			c.Close()
			return nil, b.unavailable("StartTLS with "+b.addr+" (check ca_file, the server name, and that the server offers StartTLS)", err)
		}
	}
	return c, nil
}

// exchange runs fn on c within Timeout and ctx: when either ends first, c
// is closed, which fails fn's pending operation. It reports whether c is
// still usable.
func (b *Backend) exchange(ctx context.Context, c *goldap.Conn, fn func(*goldap.Conn) error) (usable bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.Close()
		close(closed)
	})
	err = fn(c)
	if !stop() {
		<-closed // the closer ran: wait for it
		if err == nil || !isResult(err) {
			err = fmt.Errorf("no answer from %s in time (timeout %v): %w", b.addr, b.timeout, ctx.Err())
		}
		return false, err
	}
	return !c.IsClosing() && (err == nil || isResult(err)), err
}

// isResult reports whether err is an LDAP result from the server (as
// opposed to a network or client-side failure).
func isResult(err error) bool {
	var e *goldap.Error
	return errors.As(err, &e) && e.ResultCode < goldap.ErrorNetwork
}

// userBind binds as dn with pw on a new connection and, when the bind
// succeeds, runs then on it before closing it. refused is the directory's
// answer when it did not accept the bind (invalid credentials, a locked
// account); err is set when it could not decide.
func (b *Backend) userBind(ctx context.Context, dn string, pw authn.Password, then func(*goldap.Conn) error) (refused, err error) {
	select {
	case b.binds <- struct{}{}:
	case <-ctx.Done():
		return nil, b.unavailable("bind", fmt.Errorf("%d binds already in progress: %w", cap(b.binds), ctx.Err()))
	}
	defer func() { <-b.binds }()
	c, err := b.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_, err = b.exchange(ctx, c, func(c *goldap.Conn) error {
		_, err := c.SimpleBind(goldap.NewSimpleBindRequest(dn, string(pw.Bytes()), nil))
		if isResult(err) {
			refused = err
			return nil
		}
		if err != nil {
			return err
		}
		return then(c)
	})
	if err != nil {
		return nil, b.unavailable("bind", err)
	}
	return refused, nil
}

// pool holds connections bound as the service account.
type pool struct {
	b     *Backend
	slots chan struct{}     // one per connection in use
	idle  chan *goldap.Conn // bound and unused

	mu     sync.Mutex
	closed bool
}

func newPool(b *Backend, size int) *pool {
	return &pool{b: b, slots: make(chan struct{}, size), idle: make(chan *goldap.Conn, size)}
}

var errClosed = errors.New("backend closed")

// do runs fn on a service connection. A pooled connection that turns out
// to be dead (the server closed it while idle) is replaced once by a new
// one.
func (p *pool) do(ctx context.Context, fn func(*goldap.Conn) error) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return p.b.unavailable("service connection", fmt.Errorf("all %d connections busy: %w", cap(p.slots), ctx.Err()))
	}
	defer func() { <-p.slots }()
	for attempt := 0; ; attempt++ {
		c, reused, err := p.get(ctx)
		if err != nil {
			return err
		}
		usable, err := p.b.exchange(ctx, c, fn)
		p.put(c, usable)
		if err != nil && !usable && reused && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return err
	}
}

func (p *pool) get(ctx context.Context) (c *goldap.Conn, reused bool, err error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, false, p.b.unavailable("service connection", errClosed)
	}
	for {
		select {
		case c := <-p.idle:
			if c.IsClosing() {
				c.Close()
				continue
			}
			return c, true, nil
		default:
		}
		break
	}
	c, err = p.b.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	_, err = p.b.exchange(ctx, c, func(c *goldap.Conn) error {
		_, err := c.SimpleBind(goldap.NewSimpleBindRequest(p.b.search.BindDN, string(p.b.servicePW.Bytes()), nil))
		return err
	})
	if err != nil {
		c.Close()
		if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
			err = fmt.Errorf("the directory refused the service account %q: check search.bind_dn and its password: %w", p.b.search.BindDN, err)
		}
		return nil, false, p.b.unavailable("service bind", err)
	}
	return c, false, nil
}

func (p *pool) put(c *goldap.Conn, usable bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if usable && !p.closed {
		select {
		case p.idle <- c:
			return
		default:
		}
	}
	c.Close()
}

func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for {
		select {
		case c := <-p.idle:
			c.Close()
		default:
			return
		}
	}
}
