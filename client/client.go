package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Client is a connection to an MQTT server that survives reconnects. Its
// methods are safe for concurrent use. The caller must call Close (or
// Disconnect) when done.
type Client struct {
	cfg     Config
	servers []server
	proxy   *url.URL
	log     *slog.Logger
	now     func() time.Time
	rand    io.Reader
	version Version
	limit   int // write buffer limit

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // supervisor and delivery goroutines

	deliverQ chan delivery
	msgs     chan *Message

	// reauthMu is held for a whole Reauthenticate (before mu), so that a
	// second call cannot restart a stateful Authenticator (SCRAM) in the
	// middle of an exchange.
	reauthMu sync.Mutex

	mu        sync.Mutex // guards the fields below and every conn's write state
	cn        *conn      // current connection, nil while disconnected
	up        chan struct{}
	closed    bool  // no new operations
	closeErr  error // why
	clientID  string
	connected bool // a connection has been established once
	serverIdx int
	ids       map[uint16]*Token // packet identifiers in use
	nextID    uint16
	seq       uint64
	inflight  int // QoS 1/2 publishes awaiting acknowledgement
	quota     int // the server's Receive Maximum
	quotaCh   chan struct{}
	maxQoS    byte
	retainOK  bool
	maxPacket uint32              // the server's Maximum Packet Size, 0 none
	subs      []savedSub          // granted subscriptions, for resubscribing
	recvQoS2  map[uint16]struct{} // inbound QoS 2 ids awaiting PUBREL
	reauth    *Token              // re-authentication in progress
	info      ConnectInfo
	callbacks atomic.Int32 // callbacks running on the Client's goroutines
	storeBuf  []byte       // scratch for storePublishLocked
	storeErr  error        // first Store failure, logged once
	debug     bool         // the logger takes Debug records: log every packet
}

type delivery struct {
	m   *Message
	cn  *conn
	id  uint16
	qos byte
	// mark, when set, is a marker of Drain instead of a message:
	// deliverLoop closes it once every message before it is handed on.
	mark chan struct{}
}

// Dial validates cfg, connects to the first reachable server and returns
// the Client. It does not retry a failed first connection: the error (a
// *ReasonError for a refused CONNECT) says what went wrong. ctx bounds the
// connection attempt only.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	servers, proxyURL, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:      cfg,
		servers:  servers,
		proxy:    proxyURL,
		log:      cfg.Logger,
		now:      cfg.Now,
		rand:     cfg.Rand,
		version:  cfg.version(),
		limit:    orDefault(cfg.WriteBufferLimit, DefaultWriteBufferLimit),
		up:       make(chan struct{}),
		clientID: cfg.ClientID,
		ids:      make(map[uint16]*Token),
		recvQoS2: make(map[uint16]struct{}),
		quota:    65535,
		maxQoS:   2,
		retainOK: true,
		deliverQ: make(chan delivery, 64),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.debug = c.log.Enabled(context.Background(), slog.LevelDebug)
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	if cfg.OnMessage == nil {
		c.msgs = make(chan *Message, orDefault(cfg.MessageBuffer, DefaultMessageBuffer))
	}
	if c.clientID == "" && c.version != V5 {
		var b [8]byte
		if _, err := io.ReadFull(c.rand, b[:]); err != nil {
			return nil, fmt.Errorf("client: generating a client ID: %w", err)
		}
		c.clientID = "moat-" + hex.EncodeToString(b[:])
	}
	if err := c.loadStore(); err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	cn, err := c.connect(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.wg.Add(2)
	go c.supervise(cn)
	go c.deliverLoop()
	return c, nil
}

// loadStore resets the Store or loads the packets it holds as in-flight
// operations without a waiter.
func (c *Client) loadStore() error {
	st := c.cfg.Store
	if st == nil {
		return nil
	}
	if c.cfg.CleanStart {
		if err := st.Reset(); err != nil {
			return fmt.Errorf("client: resetting the session store: %w", err)
		}
		return nil
	}
	entries, err := st.Load()
	if err != nil {
		return fmt.Errorf("client: loading the session store: %w", err)
	}
	for _, e := range entries {
		p, _, err := packet.Decode(e.Data, c.version, 0)
		if err != nil {
			return fmt.Errorf("client: session store entry %d: %w", e.ID, err)
		}
		t := newToken(opPublish)
		t.id = e.ID
		switch p := p.(type) {
		case *packet.Publish:
			if p.PacketID != e.ID || p.QoS == 0 {
				return fmt.Errorf("client: session store entry %d: packet identifier or QoS does not match", e.ID)
			}
			t.msg = &Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain, Properties: p.Properties}
		case *packet.Pubrel:
			t.msg = &Message{QoS: 2}
			t.rel = true
		default:
			return fmt.Errorf("client: session store entry %d: unexpected %s", e.ID, p.Type())
		}
		c.seq++
		t.seq = c.seq
		c.ids[e.ID] = t
		c.inflight++
	}
	return nil
}

// Messages returns the channel of received messages when Config.OnMessage
// is nil (nil otherwise). It is closed after the Client is closed. Reading
// it slowly applies backpressure to the server.
func (c *Client) Messages() <-chan *Message { return c.msgs }

// Done returns a channel closed when the Client is closed or has given up
// reconnecting; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.ctx.Done() }

// Err returns why the Client stopped (ErrClosed after Close, or the
// connection error when reconnecting is disabled or gave up), nil while it
// runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		return nil
	}
	return c.closeErr
}

// closedErr is Err for a Client known to be stopping: ErrClosed when
// the reason is not recorded yet.
func (c *Client) closedErr() error {
	if err := c.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// ClientID returns the client identifier in use: the configured one, the
// generated one, or the one the server assigned.
func (c *Client) ClientID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clientID
}

// ConnectInfo returns the details of the current (or last) connection.
func (c *Client) ConnectInfo() ConnectInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Inflight returns how many QoS 1 and 2 publishes await their
// acknowledgement (at most the server's Receive Maximum, plus any loaded
// from the Store).
func (c *Client) Inflight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inflight
}

// IsConnected reports whether a connection is up.
func (c *Client) IsConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cn != nil
}

// Publish sends m and, at QoS 1 and 2, waits for PUBACK or PUBCOMP. A
// failure reason code from the server is returned as a *ReasonError. While
// the client is reconnecting Publish waits for the connection (bounded by
// ctx). The Client keeps m until Publish returns; the caller must not
// modify it before. If ctx ends after the message was sent, the message
// stays in flight and is still resent after reconnects.
func (c *Client) Publish(ctx context.Context, m *Message) error {
	return c.PublishAsync(ctx, m).Wait(ctx)
}

// PublishAsync queues m for sending and returns at once with a Token that
// completes when the server acknowledged it (QoS 1, 2) or when it was
// handed to the writer (QoS 0). It blocks only while the connection is
// down, the server's Receive Maximum is reached or the write buffer is
// full, bounded by ctx. At QoS 1 and 2 the Client keeps m until the Token
// completes; the caller must not modify it before. At QoS 0 m may be
// reused as soon as PublishAsync returns.
func (c *Client) PublishAsync(ctx context.Context, m *Message) *Token {
	if m.QoS > 2 {
		return failed(fmt.Errorf("client: publish: QoS %d (want 0, 1 or 2)", m.QoS))
	}
	c.mu.Lock()
	cn, err := c.acquireLocked(ctx, m.QoS > 0)
	if err != nil {
		c.mu.Unlock()
		return failed(err)
	}
	if m.QoS > c.maxQoS {
		c.mu.Unlock()
		return failed(fmt.Errorf("%w: publish at QoS %d: the server's Maximum QoS is %d", ErrNotSupported, m.QoS, c.maxQoS))
	}
	if m.Retain && !c.retainOK {
		c.mu.Unlock()
		return failed(fmt.Errorf("%w: publish with retain: the server does not support retained messages", ErrNotSupported))
	}
	if m.QoS == 0 {
		err := c.encodePublishLocked(cn, m, 0, false)
		c.mu.Unlock()
		if err != nil {
			return failed(err)
		}
		return completed
	}
	id, err := c.allocIDLocked()
	if err != nil {
		c.mu.Unlock()
		return failed(err)
	}
	if err := c.encodePublishLocked(cn, m, id, false); err != nil {
		c.mu.Unlock()
		return failed(err)
	}
	t := newToken(opPublish)
	t.id, t.msg = id, m
	c.seq++
	t.seq = c.seq
	c.ids[id] = t
	c.inflight++
	c.storePublishLocked(id, m)
	c.mu.Unlock()
	return t
}

// acquireLocked waits until there is a connection, room in its write
// buffer and, with quota, room in the server's Receive Maximum. It is
// called and returns with c.mu held.
func (c *Client) acquireLocked(ctx context.Context, quota bool) (*conn, error) {
	for {
		if c.closed {
			return nil, c.closeErr
		}
		var wait <-chan struct{}
		cn := c.cn
		switch {
		case cn == nil:
			wait = c.up
		case len(cn.wbuf) >= c.limit:
			if cn.drained == nil {
				cn.drained = make(chan struct{})
			}
			wait = cn.drained
		case quota && c.inflight >= c.quota:
			if c.quotaCh == nil {
				c.quotaCh = make(chan struct{})
			}
			wait = c.quotaCh
		default:
			return cn, nil
		}
		var cdone <-chan struct{}
		if cn != nil {
			cdone = cn.done
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-cdone:
		case <-ctx.Done():
			c.mu.Lock()
			return nil, ctx.Err()
		case <-c.ctx.Done():
		}
		c.mu.Lock()
	}
}

// allocIDLocked returns a free packet identifier.
func (c *Client) allocIDLocked() (uint16, error) {
	for range 65535 {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, used := c.ids[c.nextID]; !used {
			return c.nextID, nil
		}
	}
	return 0, errors.New("client: all 65535 packet identifiers are in use")
}

// encodePublishLocked appends m as a PUBLISH to cn's write buffer,
// replacing its topic by an alias when Config.TopicAliases allows it.
func (c *Client) encodePublishLocked(cn *conn, m *Message, id uint16, dup bool) error {
	p := &cn.pub
	*p = packet.Publish{Dup: dup, QoS: m.QoS, Retain: m.Retain, Topic: m.Topic, PacketID: id, Payload: m.Payload}
	defer func() { *p = packet.Publish{} }() // drop references to m
	var newAlias uint16
	if c.version == V5 {
		p.Properties = m.Properties
		p.Properties.Unmark(packet.PropTopicAlias)
		p.Properties.SubscriptionIDs = nil
		if cn.aliasMax > 0 && m.Topic != "" {
			if a, ok := cn.aliasOut[m.Topic]; ok {
				p.Topic = ""
				p.Properties.SetTopicAlias(a)
			} else if len(cn.aliasOut) < int(cn.aliasMax) {
				newAlias = uint16(len(cn.aliasOut) + 1)
				p.Properties.SetTopicAlias(newAlias)
			}
		}
	}
	if c.maxPacket != 0 {
		n, err := packet.Size(p, c.version)
		if err != nil {
			return fmt.Errorf("client: publish: %w", err)
		}
		if n > int(c.maxPacket) {
			return fmt.Errorf("%w: publish of %d bytes: the server's Maximum Packet Size is %d", ErrNotSupported, n, c.maxPacket)
		}
	}
	if _, err := cn.appendLocked(p); err != nil {
		return fmt.Errorf("client: publish: %w", err)
	}
	if newAlias != 0 {
		if cn.aliasOut == nil {
			cn.aliasOut = make(map[string]uint16)
		}
		cn.aliasOut[m.Topic] = newAlias
	}
	return nil
}

// storePublishLocked records a QoS 1/2 publish in the Store, encoded
// without topic alias (aliases do not outlive a connection).
func (c *Client) storePublishLocked(id uint16, m *Message) {
	if c.cfg.Store == nil {
		return
	}
	p := &packet.Publish{QoS: m.QoS, Retain: m.Retain, Topic: m.Topic, PacketID: id, Payload: m.Payload}
	if c.version == V5 {
		p.Properties = m.Properties
		p.Properties.Unmark(packet.PropTopicAlias)
		p.Properties.SubscriptionIDs = nil
	}
	b, err := packet.Append(c.storeBuf[:0], p, c.version)
	if err != nil {
		c.storeCheck(err)
		return
	}
	c.storeBuf = b
	c.storeCheck(c.cfg.Store.Put(id, b))
}

// completeLocked ends a QoS 1/2 publish with err.
func (c *Client) completeLocked(t *Token, err error) {
	delete(c.ids, t.id)
	c.inflight--
	if c.quotaCh != nil {
		close(c.quotaCh)
		c.quotaCh = nil
	}
	if c.cfg.Store != nil {
		c.storeCheck(c.cfg.Store.Delete(t.id))
	}
	t.finish(err)
}

func (c *Client) storePutLocked(id uint16, data []byte) {
	if c.cfg.Store != nil {
		c.storeCheck(c.cfg.Store.Put(id, data))
	}
}

func (c *Client) storeCheck(err error) {
	if err != nil && c.storeErr == nil {
		c.storeErr = err
		c.log.Warn("client: session store failed; QoS 1/2 state may not survive a restart", "err", err)
	}
}

// Subscribe subscribes to the given filters and waits for SUBACK. It
// returns the server's reason code for each subscription (the granted QoS
// 0..2, or a failure code ≥ 0x80) and, when any subscription was refused,
// also a *ReasonError naming the first refused filter. Subscriptions are
// remembered and made again after a reconnect that did not resume the
// session.
func (c *Client) Subscribe(ctx context.Context, subs ...Subscription) ([]ReasonCode, error) {
	return c.SubscribeWith(ctx, Properties{}, subs...)
}

// SubscribeWith is Subscribe with MQTT 5 SUBSCRIBE properties
// (Subscription Identifier, User properties).
func (c *Client) SubscribeWith(ctx context.Context, props Properties, subs ...Subscription) ([]ReasonCode, error) {
	if len(subs) == 0 {
		return nil, errors.New("client: subscribe: no topic filter")
	}
	for _, s := range subs {
		if err := packet.ValidTopicFilter(s.Filter); err != nil {
			return nil, fmt.Errorf("client: subscribe %q: %w", s.Filter, err)
		}
		if s.QoS > 2 {
			return nil, fmt.Errorf("client: subscribe %q: QoS %d (want 0, 1 or 2)", s.Filter, s.QoS)
		}
	}
	t, err := c.sendRequest(ctx, opSubscribe, &packet.Subscribe{Properties: props, Subscriptions: subs})
	if err != nil {
		return nil, err
	}
	if err := t.Wait(ctx); err != nil {
		return t.codes, err
	}
	for i, code := range t.codes {
		if code.IsError() {
			return t.codes, &ReasonError{Op: "subscribe", Code: code, Topic: subs[i].Filter}
		}
	}
	return t.codes, nil
}

// Unsubscribe removes subscriptions and waits for UNSUBACK. It returns one
// reason code per filter (all Success for MQTT 3.x, which has none).
func (c *Client) Unsubscribe(ctx context.Context, filters ...string) ([]ReasonCode, error) {
	if len(filters) == 0 {
		return nil, errors.New("client: unsubscribe: no topic filter")
	}
	for _, f := range filters {
		if err := packet.ValidTopicFilter(f); err != nil {
			return nil, fmt.Errorf("client: unsubscribe %q: %w", f, err)
		}
	}
	t, err := c.sendRequest(ctx, opUnsubscribe, &packet.Unsubscribe{Filters: filters})
	if err != nil {
		return nil, err
	}
	if err := t.Wait(ctx); err != nil {
		return t.codes, err
	}
	return t.codes, nil
}

// sendRequest sends a SUBSCRIBE or UNSUBSCRIBE with a new packet
// identifier and returns its Token.
func (c *Client) sendRequest(ctx context.Context, k opKind, p packet.Packet) (*Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cn, err := c.acquireLocked(ctx, false)
	if err != nil {
		return nil, err
	}
	return c.sendRequestLocked(cn, k, p)
}

func (c *Client) sendRequestLocked(cn *conn, k opKind, p packet.Packet) (*Token, error) {
	id, err := c.allocIDLocked()
	if err != nil {
		return nil, err
	}
	t := newToken(k)
	t.id = id
	switch p := p.(type) {
	case *packet.Subscribe:
		p.PacketID = id
		t.subs, t.subProps = p.Subscriptions, p.Properties
	case *packet.Unsubscribe:
		p.PacketID = id
		t.filters = p.Filters
	}
	if _, err := cn.appendLocked(p); err != nil {
		return nil, fmt.Errorf("client: %s: %w", p.Type(), err)
	}
	c.ids[id] = t
	return t, nil
}

// Reauthenticate starts MQTT 5 re-authentication with Config.Auth and
// waits until the server accepts it. A refusal ends the connection (the
// server sends DISCONNECT).
func (c *Client) Reauthenticate(ctx context.Context) error {
	if c.cfg.Auth == nil {
		return errors.New("client: reauthenticate: Config.Auth is nil")
	}
	if !c.reauthMu.TryLock() {
		return errors.New("client: reauthenticate: already in progress")
	}
	defer c.reauthMu.Unlock()
	data, err := c.cfg.Auth.Start(ctx)
	if err != nil {
		return fmt.Errorf("client: reauthenticate: %w", err)
	}
	c.mu.Lock()
	cn, err := c.acquireLocked(ctx, false)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if c.reauth != nil {
		c.mu.Unlock()
		return errors.New("client: reauthenticate: already in progress")
	}
	a := &packet.Auth{ReasonCode: packet.ReAuthenticate}
	a.Properties.AuthMethod = c.cfg.Auth.Method()
	a.Properties.Mark(packet.PropAuthMethod)
	if data != nil {
		a.Properties.AuthData = data
		a.Properties.Mark(packet.PropAuthData)
	}
	if _, err := cn.appendLocked(a); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("client: reauthenticate: %w", err)
	}
	t := newToken(opReauth)
	c.reauth = t
	c.mu.Unlock()
	return t.Wait(ctx)
}

// Disconnect sends DISCONNECT (normal disconnection: the server discards
// the will), waits until it is written or ctx ends, and closes the Client.
// Operations still waiting fail with ErrClosed.
func (c *Client) Disconnect(ctx context.Context) error {
	c.mu.Lock()
	cn := c.cn
	if cn == nil || c.closed {
		c.mu.Unlock()
		c.Close()
		return nil
	}
	c.closed, c.closeErr = true, ErrClosed
	_, err := cn.appendLocked(&packet.Disconnect{ReasonCode: packet.Success})
	cn.disconnecting = true
	c.mu.Unlock()
	if err == nil {
		select {
		case <-cn.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	c.Close()
	return err
}

// Close closes the connection without DISCONNECT (so the server publishes
// the will, if any), stops reconnecting and waits for the Client's
// goroutines, except one that is running a callback (OnMessage,
// OnConnect, OnConnectionLost) at that moment: that one ends when the
// callback returns, so Close may be called from a callback. Operations
// still waiting fail with ErrClosed. Close is idempotent and returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.closeErr = true, ErrClosed
	}
	cn := c.cn
	c.mu.Unlock()
	c.cancel()
	if cn != nil {
		cn.fail(ErrClosed)
		cn.wg.Wait()
	}
	if c.callbacks.Load() == 0 {
		c.wg.Wait()
	}
	c.mu.Lock()
	c.failAllLocked(c.closeErr)
	c.mu.Unlock()
	return nil
}

// failAllLocked fails every pending operation.
func (c *Client) failAllLocked(err error) {
	for id, t := range c.ids {
		delete(c.ids, id)
		t.finish(err)
	}
	c.inflight = 0
	if c.reauth != nil {
		c.reauth.finish(err)
		c.reauth = nil
	}
}

// shutdown stops the Client from the supervisor after a fatal error.
func (c *Client) shutdown(err error) {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.closeErr = true, err
	}
	c.failAllLocked(c.closeErr)
	c.mu.Unlock()
	c.cancel()
}

// supervise waits for the connection to end and reconnects.
func (c *Client) supervise(cn *conn) {
	defer c.wg.Done()
	for {
		select {
		case <-cn.done:
		case <-c.ctx.Done():
			cn.fail(ErrClosed)
		}
		cn.wg.Wait()
		err := cn.err
		c.lost(cn)
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		c.log.Info("client: connection lost", "err", err)
		if f := c.cfg.OnConnectionLost; f != nil {
			c.callbacks.Add(1)
			f(c, err)
			c.callbacks.Add(-1)
		}
		if !c.cfg.Reconnect.Enabled {
			c.shutdown(fmt.Errorf("%w: %w", ErrConnectionLost, err))
			return
		}
		if cn = c.reconnect(); cn == nil {
			return
		}
	}
}

// lost clears the connection state after cn ended.
func (c *Client) lost(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cn == cn {
		c.cn = nil
		c.up = make(chan struct{})
	}
	// Only PUBLISH and PUBREL are resent [MQTT-4.4.0-1]; requests
	// waiting for SUBACK or UNSUBACK fail.
	for id, t := range c.ids {
		if t.kind != opPublish {
			delete(c.ids, id)
			t.finish(fmt.Errorf("%w: %w", ErrConnectionLost, cn.err))
		}
	}
	if c.reauth != nil {
		c.reauth.finish(fmt.Errorf("%w: %w", ErrConnectionLost, cn.err))
		c.reauth = nil
	}
}

// reconnect tries to connect until it succeeds, the Client is closed or
// MaxAttempts is reached; it returns nil in the last two cases.
func (c *Client) reconnect() *conn {
	p := c.cfg.Reconnect
	var lastErr error
	for attempt := 0; p.MaxAttempts == 0 || attempt < p.MaxAttempts; attempt++ {
		d := c.backoff(attempt)
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-c.ctx.Done():
			timer.Stop()
			return nil
		}
		cn, err := c.connect(c.ctx)
		if err == nil {
			return cn
		}
		if c.ctx.Err() != nil {
			return nil
		}
		lastErr = err
		c.log.Warn("client: reconnect failed", "attempt", attempt+1, "err", err)
		if p.Retry != nil {
			c.callbacks.Add(1)
			retry := p.Retry(attempt+1, err)
			c.callbacks.Add(-1)
			if !retry {
				c.shutdown(fmt.Errorf("client: reconnecting stopped: %w", err))
				return nil
			}
		}
	}
	c.shutdown(fmt.Errorf("client: giving up after %d reconnect attempts: %w", p.MaxAttempts, lastErr))
	return nil
}

// backoff returns the delay before reconnect attempt n (from 0):
// uniformly in [d/2, d] with d = min(MinDelay·2ⁿ, MaxDelay).
func (c *Client) backoff(n int) time.Duration {
	lo := orDefault(c.cfg.Reconnect.MinDelay, DefaultMinBackoff)
	hi := orDefault(c.cfg.Reconnect.MaxDelay, DefaultMaxBackoff)
	hi = max(hi, lo)
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	var b [8]byte
	if _, err := io.ReadFull(c.rand, b[:]); err != nil {
		return d
	}
	half := d / 2
	return half + time.Duration(binary.LittleEndian.Uint64(b[:])%uint64(half+1))
}

// deliverLoop calls the message handler and acknowledges QoS 1 and 2
// messages afterwards.
func (c *Client) deliverLoop() {
	defer c.wg.Done()
	if c.msgs != nil {
		defer close(c.msgs)
	}
	for {
		select {
		case d := <-c.deliverQ:
			if d.mark != nil {
				close(d.mark)
				continue
			}
			if h := c.cfg.OnMessage; h != nil {
				c.callbacks.Add(1)
				h(d.m)
				c.callbacks.Add(-1)
			} else {
				select {
				case c.msgs <- d.m:
				case <-c.ctx.Done():
					return
				}
			}
			if d.qos > 0 && !c.cfg.ManualAck && c.ctx.Err() == nil {
				c.ack(d)
			}
		case <-c.ctx.Done():
			return
		}
	}
}

// Drain waits until every message the client received before the call
// has been passed on: to Config.OnMessage, or taken from Messages() by
// Drain itself and given to fn, in order. A message that reached the
// client before a SUBACK or PUBACK the caller has seen is therefore
// handled when Drain returns: without it, such a message may still be
// on its way from the connection's reader to Messages(). fn may be nil
// when Config.OnMessage is set; with Messages() it is called for every
// message Drain takes, including ones that arrive while it waits.
func (c *Client) Drain(ctx context.Context, fn func(*Message)) error {
	mark := make(chan struct{})
	send := c.deliverQ
	take := func(m *Message) {
		if fn != nil {
			fn(m)
		}
	}
	for {
		select {
		case send <- delivery{mark: mark}:
			send = nil
		case m, ok := <-c.msgs:
			if !ok {
				return c.closedErr()
			}
			take(m)
		case <-mark:
			// Every message before the marker is on c.msgs now.
			for {
				select {
				case m, ok := <-c.msgs:
					if !ok {
						return c.closedErr()
					}
					take(m)
				default:
					return nil
				}
			}
		case <-c.ctx.Done():
			return c.closedErr()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Ack acknowledges a received QoS 1 or 2 message when Config.ManualAck
// is set (PUBACK, or PUBREC for QoS 2; the rest of the QoS 2 exchange is
// automatic). Acknowledge messages in the order they were received. It
// does nothing for QoS 0 messages, messages already acknowledged, and
// messages that arrived on an earlier connection (the server sends those
// again). Safe for concurrent use, but m must not be acknowledged by two
// goroutines.
func (c *Client) Ack(m *Message) {
	if m.QoS == 0 || m.ackConn == nil {
		return
	}
	c.ack(delivery{m: m, cn: m.ackConn, id: m.ackID, qos: m.QoS})
	m.ackConn = nil
}

// ack sends PUBACK or PUBREC for a delivered message, on the connection
// it came from if that is still up (otherwise the server resends it).
func (c *Client) ack(d delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cn != d.cn {
		return
	}
	if d.qos == 1 {
		d.cn.recvInflight = max(d.cn.recvInflight-1, 0)
		d.cn.appendLocked(&packet.Puback{PacketID: d.id})
		return
	}
	d.cn.appendLocked(&packet.Pubrec{PacketID: d.id})
}

// savedSub is a granted subscription with the properties of its
// SUBSCRIBE (Subscription Identifier, User properties).
type savedSub struct {
	sub   Subscription
	props Properties
}

// recordSubscriptionsLocked remembers the granted subscriptions of a
// SUBACK, replacing earlier ones with the same filter.
func (c *Client) recordSubscriptionsLocked(subs []Subscription, props Properties, codes []ReasonCode) {
	for i, s := range subs {
		if i >= len(codes) || codes[i].IsError() {
			continue
		}
		j := slices.IndexFunc(c.subs, func(o savedSub) bool { return o.sub.Filter == s.Filter })
		if j >= 0 {
			c.subs[j] = savedSub{s, props}
		} else {
			c.subs = append(c.subs, savedSub{s, props})
		}
	}
}
