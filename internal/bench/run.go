package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// run is the state of one Run call.
type run struct {
	cfg       Config
	runID     uint64
	keepAlive uint16

	startNanos int64
	stopping   atomic.Bool // connections are being closed on purpose
	pubStopped atomic.Bool

	attempted, connected, failed, resumed atomic.Int64
	lastConnect                           atomic.Int64 // UnixNano of the latest successful CONNACK
	dropped                               atomic.Int64 // connections lost unexpectedly
	sent, acked, ackedInWindow            atomic.Int64
	delivered, deliveredInWindow          atomic.Int64
	foreign, decryptErrs                  atomic.Int64
	outOfOrder                            atomic.Int64 // closed loop: behind or equal to the publisher's last

	latency, handshake, connack Histogram

	// room wakes one publisher waiting for room in closed loop (buffered,
	// so a wake sent just before a publisher starts waiting is not lost);
	// waiting counts those publishers.
	room    chan struct{}
	waiting atomic.Int64
	wakeAt  int64 // backlog at or under which release wakes a publisher
	// pending counts the deliveries reserved by publishers in closed loop
	// and not yet seen by a subscriber.
	pending atomic.Int64

	errMu  sync.Mutex
	errs   map[string]int
	errOrd []string
}

// noteErr counts an error by kind and message (the first 20 distinct ones
// are kept for the report).
func (r *run) noteErr(what string, err error) {
	msg := what + ": " + err.Error()
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if _, ok := r.errs[msg]; !ok {
		if len(r.errOrd) >= 20 {
			r.errs["(other errors)"]++
			return
		}
		r.errOrd = append(r.errOrd, msg)
	}
	r.errs[msg]++
}

// Run executes the benchmark described by cfg and returns its result. It
// stops early, with the partial result and ctx's error, when ctx ends.
// Run is safe to call concurrently with different Configs.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var idb [8]byte
	rand.Read(idb[:])
	r := &run{cfg: c, runID: binary.BigEndian.Uint64(idb[:]), errs: map[string]int{}, room: make(chan struct{}, 16)}
	total := c.Duration + c.Drain + 60*time.Second
	ka := max(60, 2*int(total/time.Second))
	r.keepAlive = uint16(min(ka, 65535))
	per := r.perMessage()
	r.wakeAt = int64(c.MaxBacklog) - per*max(1, min(wakeBatch, int64(c.MaxBacklog)/per))
	return r.exec(ctx)
}

func (r *run) exec(ctx context.Context) (*Result, error) {
	cfg := &r.cfg
	res := &Result{Label: cfg.Label, Scenario: string(cfg.Scenario), Params: paramsOf(cfg),
		Start: time.Now().UTC(), GoMaxProcs: runtime.GOMAXPROCS(0)}
	r.startNanos = time.Now().Add(-time.Second).UnixNano()

	clients := r.makeClients()
	for _, c := range clients {
		c.tls = r.tlsFor(c.idx)
	}
	if cfg.Resume {
		// A first full handshake per client fills its session cache; it is
		// not measured.
		r.forEach(ctx, clients, func(c *client) {
			if _, _, err := c.dial(ctx, c.tls); err == nil {
				_, err = c.handshakeMQTT()
				c.disconnect()
				if err != nil {
					r.noteErr("warm-up connect", err)
				}
			} else {
				r.noteErr("warm-up connect", err)
			}
			c.nc, c.br = nil, nil
		})
		if cfg.AfterWarmUp != nil {
			if err := cfg.AfterWarmUp(ctx); err != nil {
				return res, fmt.Errorf("bench: after the warm-up: %w", err)
			}
		}
	}
	smp := newSampler(r, cfg.BrokerPID)
	smp.start()
	defer smp.stop()
	before := smp.read()

	// Connect: subscribers first, so that nothing published is missed.
	connStart := time.Now()
	err := r.connectAll(ctx, clients)
	connEnd := time.Now()
	afterConn := smp.read()
	res.Connect = ConnectStats{
		Attempted: r.attempted.Load(), Succeeded: r.connected.Load(), Failed: r.failed.Load(),
		Resumed: r.resumed.Load(), Seconds: connEnd.Sub(connStart).Seconds(),
		Handshake: r.handshake.Summary(), Connack: r.connack.Summary(),
	}
	if res.Connect.Attempted > 0 {
		res.Connect.SuccessRate = float64(res.Connect.Succeeded) / float64(res.Connect.Attempted)
	}
	// The rate runs to the last success, so that a few connections
	// hanging until their timeout do not dilute it.
	if last := r.lastConnect.Load(); last > 0 {
		if s := time.Unix(0, last).Sub(connStart).Seconds(); s > 0 {
			res.Connect.PerSecond = float64(res.Connect.Succeeded) / s
		}
	}

	var phaseStart, phaseEnd time.Time
	var afterPhase *ProcStat
	if err == nil {
		if cfg.OnConnected != nil {
			cfg.OnConnected()
		}
		if cfg.Settle > 0 {
			// Cancelled, the publishing phase below ends at once too.
			_ = sleepCtx(ctx, cfg.Settle)
		}
		phaseStart = time.Now()
		h0, err0 := ReadHostCPU()
		switch cfg.Scenario {
		case Conn:
			err = sleepCtx(ctx, cfg.Duration)
		default:
			err = r.publishPhase(ctx, clients)
		}
		phaseEnd = time.Now()
		afterPhase = smp.read()
		h1, err1 := ReadHostCPU()
		res.Host = hostStats(h0, h1, err0, err1)
		if cfg.Scenario != Conn && err == nil {
			err = r.drain(ctx)
		}
	}
	r.stopping.Store(true)
	r.closeAll(clients)
	smp.stop()

	res.Elapsed = time.Since(res.Start).Seconds()
	res.Messages = r.messageStats(phaseEnd.Sub(phaseStart))
	res.Latency = r.latency.Summary()
	res.LatencyBuckets = r.latency.Buckets(60)
	res.HandshakeBuckets = r.handshake.Buckets(60)
	res.LatencyHist, res.HandshakeHist, res.ConnackHist = r.latency.Data(), r.handshake.Data(), r.connack.Data()
	res.Dropped = r.dropped.Load()
	res.Series = smp.series()
	res.Broker = brokerStats(cfg, before, afterConn, afterPhase, smp, res)
	r.errMu.Lock()
	for _, e := range r.errOrd {
		res.Errors = append(res.Errors, fmt.Sprintf("%s (×%d)", e, r.errs[e]))
	}
	if n := r.errs["(other errors)"]; n > 0 {
		res.Errors = append(res.Errors, fmt.Sprintf("(%d more errors of other kinds)", n))
	}
	r.errMu.Unlock()
	if cfg.Progress != nil && cfg.ProgressTTY {
		fmt.Fprintln(cfg.Progress)
	}
	return res, err
}

// makeClients lays out the clients of the scenario: subscribers first.
func (r *run) makeClients() []*client {
	cfg := &r.cfg
	var cs []*client
	add := func(ro role, id, topic string) {
		c := &client{r: r, idx: len(cs), role: ro, id: id, topic: topic, done: make(chan struct{})}
		if ro == rolePub && cfg.QoS > 0 {
			c.win = make(chan struct{}, cfg.Inflight)
		}
		cs = append(cs, c)
	}
	prefix := fmt.Sprintf("bench-%08x", uint32(r.runID))
	t := cfg.Topic
	if cfg.Scenario == Conn {
		for i := range cfg.Clients {
			add(roleIdle, fmt.Sprintf("%s-c%d", prefix, i), "")
		}
		return cs
	}
	for i := range cfg.Subs {
		var f string
		switch cfg.Scenario {
		case Sub:
			f = cfg.Filter
		case P2P:
			f = fmt.Sprintf("%s/p2p/%d", t, i)
		case FanIn:
			f = t + "/in/+"
		case FanOut:
			f = t + "/out"
		case Shared:
			f = "$share/bench/" + t + "/shared/+"
		}
		add(roleSub, fmt.Sprintf("%s-s%d", prefix, i), f)
	}
	for i := range cfg.Pubs {
		var tp string
		switch cfg.Scenario {
		case Pub:
			tp = fmt.Sprintf("%s/pub/%d", t, i)
		case P2P:
			tp = fmt.Sprintf("%s/p2p/%d", t, i)
		case FanIn:
			tp = fmt.Sprintf("%s/in/%d", t, i)
		case FanOut:
			tp = t + "/out"
		case Shared:
			tp = fmt.Sprintf("%s/shared/%d", t, i)
		}
		add(rolePub, fmt.Sprintf("%s-p%d", prefix, i), tp)
	}
	if cfg.MaxBacklog > 0 && cfg.Scenario != Shared {
		// Each subscriber sees every publisher's messages in order, so a
		// gap in a publisher's sequence numbers is loss (see onPublish).
		for _, c := range cs[:cfg.Subs] {
			c.lastSeq = make([]uint32, len(cs))
		}
	}
	return cs
}

// tlsFor returns the TLS config of client i, or nil for plain TCP.
func (r *run) tlsFor(i int) *tls.Config {
	cfg := &r.cfg
	if cfg.TLS == nil {
		return nil
	}
	t := cfg.TLS.Clone()
	if len(cfg.ClientCerts) > 0 {
		t.Certificates = []tls.Certificate{cfg.ClientCerts[i%len(cfg.ClientCerts)]}
	}
	if cfg.Resume {
		t.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	}
	return t
}

// connectAll connects every client, at most ConnConcurrency at a time and
// at ConnRate per second when set. It fails only when ctx ends; failed
// connections are counted.
func (r *run) connectAll(ctx context.Context, cs []*client) error {
	return r.forEach(ctx, cs, func(c *client) { r.connectOne(ctx, c) })
}

// forEach runs f for every client, at most ConnConcurrency at a time and
// at ConnRate per second when set.
func (r *run) forEach(ctx context.Context, cs []*client, f func(*client)) error {
	cfg := &r.cfg
	sem := make(chan struct{}, cfg.ConnConcurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range cs {
		if cfg.ConnRate > 0 {
			at := start.Add(time.Duration(float64(i) / cfg.ConnRate * float64(time.Second)))
			if err := sleepCtx(ctx, time.Until(at)); err != nil {
				break
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			f(c)
		})
	}
	wg.Wait()
	return ctx.Err()
}

func (r *run) connectOne(ctx context.Context, c *client) {
	r.attempted.Add(1)
	hs, resumed, err := c.dial(ctx, c.tls)
	if err == nil {
		var lat time.Duration
		if lat, err = c.handshakeMQTT(); err == nil {
			r.handshake.Record(hs)
			r.connack.Record(lat)
			if resumed {
				r.resumed.Add(1)
			}
			r.connected.Add(1)
			for now := time.Now().UnixNano(); ; {
				l := r.lastConnect.Load()
				if now <= l || r.lastConnect.CompareAndSwap(l, now) {
					break
				}
			}
			go c.readLoop()
			return
		}
		c.nc.Close()
	}
	c.nc = nil
	r.failed.Add(1)
	r.noteErr("connect", err)
	r.cfg.Logger.Debug("bench: connection failed", "client", c.id, "err", err)
}

// publishPhase runs every connected publisher for Duration.
func (r *run) publishPhase(ctx context.Context, cs []*client) error {
	cfg := &r.cfg
	stop := make(chan struct{})
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	for _, c := range cs {
		if c.role == rolePub && c.nc != nil {
			wg.Go(func() { c.publishLoop(stop, start, deadline) })
		}
	}
	err := sleepCtx(ctx, cfg.Duration)
	r.pubStopped.Store(true)
	close(stop)
	// A publisher may be blocked writing to a broker that no longer reads
	// from it: an expired deadline ends that write.
	for _, c := range cs {
		if c.role == rolePub && c.nc != nil {
			c.nc.SetWriteDeadline(time.Now())
		}
	}
	wg.Wait()
	return err
}

// expected is the number of deliveries the scenario should see for the
// messages sent so far, or -1 when unknown.
func (r *run) expected() int64 {
	cfg := &r.cfg
	sent := r.sent.Load()
	switch cfg.Scenario {
	case P2P, Shared:
		return sent
	case FanIn, FanOut:
		return sent * int64(cfg.Subs)
	}
	return -1
}

// drain waits up to Drain for the deliveries still expected.
func (r *run) drain(ctx context.Context) error {
	cfg := &r.cfg
	deadline := time.Now().Add(cfg.Drain)
	for time.Now().Before(deadline) {
		exp := r.expected()
		if exp < 0 {
			// Unknown: wait for QoS 1 acks, or a quiet moment.
			if cfg.QoS == 0 || r.acked.Load() >= r.sent.Load() {
				return sleepCtx(ctx, min(cfg.Drain, 200*time.Millisecond))
			}
		} else if r.delivered.Load() >= exp && (cfg.QoS == 0 || r.acked.Load() >= r.sent.Load()) {
			return nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// closeAll disconnects every client and waits for the readers to end.
func (r *run) closeAll(cs []*client) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range cs {
		if c.nc == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c.disconnect()
			<-c.done
		})
	}
	wg.Wait()
}

func (r *run) messageStats(window time.Duration) MessageStats {
	m := MessageStats{
		Sent: r.sent.Load(), Acked: r.acked.Load(), AckedInWindow: r.ackedInWindow.Load(), Delivered: r.delivered.Load(),
		DeliveredInWindow: r.deliveredInWindow.Load(), Expected: r.expected(),
		Foreign: r.foreign.Load(), DecryptErrors: r.decryptErrs.Load(), OutOfOrder: r.outOfOrder.Load(),
		WindowSeconds: window.Seconds(),
	}
	if m.Expected >= 0 {
		m.Lost = max(0, m.Expected-m.Delivered)
		if m.Expected > 0 {
			m.LossRate = float64(m.Lost) / float64(m.Expected)
		}
	}
	if s := window.Seconds(); s > 0 {
		m.SentPerSecond = float64(m.Sent) / s
		m.DeliveredPerSecond = float64(m.DeliveredInWindow) / s
		m.AcceptedPerSecond = m.SentPerSecond
		if r.cfg.QoS > 0 {
			m.AcceptedPerSecond = float64(m.AckedInWindow) / s
		}
	}
	return m
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// paramsOf summarises the configuration for the report.
func paramsOf(c *Config) Params {
	p := Params{
		Addr: c.Addr, SubAddr: c.SubAddr, TLS: c.TLS != nil, ClientCerts: len(c.ClientCerts), Resume: c.Resume,
		Clients: c.Clients, Pubs: c.Pubs, Subs: c.Subs, ConnRate: c.ConnRate,
		QoS: c.QoS, PayloadSize: c.PayloadSize, MsgRate: c.MsgRate, Inflight: c.Inflight,
		DurationSeconds: c.Duration.Seconds(), Encrypted: c.Encrypt != nil, MaxBacklog: c.MaxBacklog,
		Persistent: c.Persistent,
	}
	if c.MsgRate > 0 && c.MaxBacklog == 0 {
		p.OfferedPerSecond = c.MsgRate * float64(c.Pubs)
	}
	if c.TLS != nil {
		p.MutualTLS = len(c.ClientCerts) > 0 || len(c.TLS.Certificates) > 0
		var names []string
		for _, id := range c.TLS.CurvePreferences {
			names = append(names, id.String())
		}
		p.KeyExchange = strings.Join(names, ",")
	}
	return p
}

// perMessage is the number of deliveries one published message should
// cause.
func (r *run) perMessage() int64 {
	if r.cfg.Scenario == FanIn || r.cfg.Scenario == FanOut {
		return int64(r.cfg.Subs)
	}
	return 1
}

// wakeBatch is how many messages' worth of room a closed loop waits for
// before it wakes a publisher, so that publishers send small batches (one
// write, one broker read) rather than one message per wake-up: the load
// generator's own cost per message then stays well under the broker's.
const wakeBatch = 8

// release returns n delivery reservations in closed loop (deliveries
// seen, or deliveries known to be lost) and, when a batch of messages fits
// again, wakes one waiting publisher. Waking publishers one at a time
// keeps the offered load steady, as a fleet of devices would, instead of
// releasing every waiting publisher at once in bursts that the broker
// then has to absorb.
func (r *run) release(n int64) {
	if r.pending.Add(-n) > r.wakeAt || r.waiting.Load() == 0 {
		return
	}
	select {
	case r.room <- struct{}{}:
	default:
	}
}

// tryReserve reserves the deliveries of one more message if they fit in
// MaxBacklog. A single message is always allowed when nothing is
// outstanding, so a fan-out wider than the limit still makes progress.
func (r *run) tryReserve() bool {
	per := r.perMessage()
	if n := r.pending.Add(per); n > int64(r.cfg.MaxBacklog) && n > per {
		r.pending.Add(-per)
		return false
	}
	return true
}

// unreserve returns the reservation of a message that was not sent.
func (r *run) unreserve() { r.pending.Add(-r.perMessage()) }

// reserve blocks until the deliveries of one more message fit in
// MaxBacklog, then reserves them. Reserving before sending (rather than
// checking the backlog and then sending a batch) keeps the number of
// outstanding deliveries at MaxBacklog exactly, however many publishers
// pass the check at once. Subscribers return the reservations of messages
// they can tell were lost (a gap in a publisher's sequence); when
// deliveries stop for a second while messages are outstanding, the broker
// is taken to have dropped the rest, and their reservations are forgiven
// so the run goes on. (A shorter wait would mistake a broker's pause for
// loss and overfill its queue.) It returns false when stop is closed.
func (r *run) reserve(stop <-chan struct{}, t *time.Timer) bool {
	if r.tryReserve() {
		return true
	}
	r.waiting.Add(1)
	defer r.waiting.Add(-1)
	last, since := r.delivered.Load(), time.Now()
	for !r.tryReserve() {
		t.Reset(10 * time.Millisecond)
		select {
		case <-r.room:
		case <-t.C:
		case <-stop:
			return false
		}
		if d := r.delivered.Load(); d != last {
			last, since = d, time.Now()
		} else if time.Since(since) > time.Second {
			r.pending.Store(0) // stalled: the broker dropped what is missing
			since = time.Now()
		}
	}
	return true
}
