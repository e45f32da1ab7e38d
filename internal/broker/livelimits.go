package broker

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Limits are the limits a running Server can change (SetLimits). Each
// field has the meaning, the zero value and the default of the Config
// field of the same name. A change applies to what comes next and never
// to what is already under way:
//
//   - MessageSizeLimit: to the next PUBLISH of every client.
//   - MaxQueued, MaxQueuedBytes: to the next message queued; queues
//     already longer keep their messages but take no more until they
//     fall below it.
//   - PushbackMessages, PushbackBytes (and MaxQueued, which bounds the
//     message mark): to the next message routed, and publishers held
//     back at a backlog that is now under its mark are let go at once.
//   - PushbackWait: to the next period of a subscriber's wait timer.
//   - QueueFullPolicy: to the next message for a full queue; publishers
//     held for room under QueueBlock are let go when it becomes
//     QueueDrop.
//   - MaxSubscriptions, MaxSubscriptionBytes: to the next SUBSCRIBE;
//     subscriptions already made stay.
//   - MaxSessions, MaxConnections: to the next CONNECT and the next
//     accepted socket; nobody is disconnected.
//   - MaxInflight, MaxKeepAlive: to sessions and connections set up
//     afterwards (a connected client keeps the window and keep alive it
//     was given, as MQTT 5 announces them in CONNACK).
//   - ConnectTimeout: to connections accepted afterwards (one already
//     in its TLS handshake or CONNECT keeps the deadline it was given),
//     to the next re-authentication step and the next session takeover.
//   - ReauthGrace: to the next expiry armed, at CONNECT or at a
//     re-authentication; an expiry already armed keeps its time.
//   - MaxRetained, MaxRetainedBytes, MaxRetainedPerIdentity,
//     MaxRetainedBytesPerIdentity: to the next retained message stored;
//     a store already over a lowered bound keeps its messages (they are
//     still replayed and may be cleared or replaced by a smaller one)
//     and takes no new one until it is below it.
//   - MaxTopicLength, MaxTopicLevels: to the next PUBLISH, SUBSCRIBE and
//     will; subscriptions and retained messages already in place stay.
//   - PreAuthMaxPacketSize: to connections accepted afterwards, and to
//     the next read of one not yet authenticated; it is never above
//     Config.MaxPacketSize, which needs a restart.
//   - SysInterval: from the next $SYS update; a negative value stops the
//     updates (the retained $SYS topics stay), a positive one starts
//     them again.
//
// The limits MQTT 5 clients are told once in CONNACK for the whole
// connection (Maximum Packet Size, Receive Maximum, Topic Alias Maximum)
// and the memory bound sized at start (ReadBudget) are not among them:
// they need a restart.
type Limits struct {
	MessageSizeLimit     uint32
	MaxKeepAlive         uint16
	MaxInflight          int
	MaxQueued            int
	MaxQueuedBytes       int64
	MaxSubscriptions     int
	MaxSubscriptionBytes int
	MaxSessions          int
	MaxConnections       int

	PushbackMessages int
	PushbackBytes    int64
	PushbackWait     time.Duration
	QueueFullPolicy  QueuePolicy

	ConnectTimeout time.Duration
	ReauthGrace    time.Duration

	MaxRetained                 int
	MaxRetainedBytes            int64
	MaxRetainedPerIdentity      int
	MaxRetainedBytesPerIdentity int64

	MaxTopicLength       int
	MaxTopicLevels       int
	PreAuthMaxPacketSize uint32
	SysInterval          time.Duration
}

// limitsOf returns the limits of a Config whose defaults are applied.
func limitsOf(c *Config) *Limits {
	return &Limits{
		MessageSizeLimit: c.MessageSizeLimit, MaxKeepAlive: c.MaxKeepAlive, MaxInflight: c.MaxInflight,
		MaxQueued: c.MaxQueued, MaxQueuedBytes: c.MaxQueuedBytes, MaxSubscriptions: c.MaxSubscriptions, MaxSubscriptionBytes: c.MaxSubscriptionBytes,
		MaxSessions: c.MaxSessions, MaxConnections: c.MaxConnections,
		PushbackMessages: c.PushbackMessages, PushbackBytes: c.PushbackBytes, PushbackWait: c.PushbackWait,
		QueueFullPolicy: c.QueueFullPolicy,
		ConnectTimeout:  c.ConnectTimeout, ReauthGrace: c.ReauthGrace,
		MaxRetained: c.MaxRetained, MaxRetainedBytes: c.MaxRetainedBytes,
		MaxRetainedPerIdentity: c.MaxRetainedPerIdentity, MaxRetainedBytesPerIdentity: c.MaxRetainedBytesPerIdentity,
		MaxTopicLength: c.MaxTopicLength, MaxTopicLevels: c.MaxTopicLevels, PreAuthMaxPacketSize: c.PreAuthMaxPacketSize,
		SysInterval: c.SysInterval,
	}
}

// setLimits sets the fields of c that l holds (the inverse of limitsOf).
func (c *Config) setLimits(l Limits) {
	c.MessageSizeLimit, c.MaxKeepAlive, c.MaxInflight = l.MessageSizeLimit, l.MaxKeepAlive, l.MaxInflight
	c.MaxQueued, c.MaxQueuedBytes, c.MaxSubscriptions, c.MaxSubscriptionBytes = l.MaxQueued, l.MaxQueuedBytes, l.MaxSubscriptions, l.MaxSubscriptionBytes
	c.MaxSessions, c.MaxConnections = l.MaxSessions, l.MaxConnections
	c.PushbackMessages, c.PushbackBytes, c.PushbackWait = l.PushbackMessages, l.PushbackBytes, l.PushbackWait
	c.QueueFullPolicy = l.QueueFullPolicy
	c.ConnectTimeout, c.ReauthGrace = l.ConnectTimeout, l.ReauthGrace
	c.MaxRetained, c.MaxRetainedBytes = l.MaxRetained, l.MaxRetainedBytes
	c.MaxRetainedPerIdentity, c.MaxRetainedBytesPerIdentity = l.MaxRetainedPerIdentity, l.MaxRetainedBytesPerIdentity
	c.MaxTopicLength, c.MaxTopicLevels, c.PreAuthMaxPacketSize = l.MaxTopicLength, l.MaxTopicLevels, l.PreAuthMaxPacketSize
	c.SysInterval = l.SysInterval
}

// withDefaults applies Config's defaults to l and checks it, returning
// every problem at once. Config.withDefaults uses it for the same
// fields, so that a limit is checked alike at start and when changed.
func (l Limits) withDefaults() (Limits, error) {
	var errs []error
	if l.MaxKeepAlive == 0 {
		l.MaxKeepAlive = DefaultMaxKeepAlive
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.MaxInflight < 0 || l.MaxInflight > 65535 {
		errs = append(errs, fmt.Errorf("broker: MaxInflight %d out of range 1..65535", l.MaxInflight))
	}
	if l.MaxQueued == 0 {
		l.MaxQueued = DefaultMaxQueued
	}
	if l.MaxSubscriptions == 0 {
		l.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if l.MaxSubscriptionBytes == 0 {
		l.MaxSubscriptionBytes = DefaultMaxSubscriptionBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections()
	}
	if l.MaxQueued < 0 || l.MaxQueuedBytes < 0 || l.MaxSubscriptions < 0 || l.MaxSubscriptionBytes < 0 || l.MaxSessions < 0 || l.MaxConnections < 0 {
		errs = append(errs, errors.New("broker: MaxQueued, MaxQueuedBytes, MaxSubscriptions, MaxSubscriptionBytes, MaxSessions and MaxConnections must not be negative"))
	}
	if l.PushbackMessages == 0 {
		l.PushbackMessages = DefaultPushbackMessages
	}
	if l.PushbackBytes == 0 {
		l.PushbackBytes = DefaultPushbackBytes
	}
	if l.PushbackWait == 0 {
		l.PushbackWait = DefaultPushbackWait
	}
	if l.PushbackWait < 0 {
		errs = append(errs, errors.New("broker: PushbackWait must not be negative"))
	}
	if l.QueueFullPolicy > QueueBlock {
		errs = append(errs, fmt.Errorf("broker: QueueFullPolicy %v is not QueueDrop or QueueBlock", l.QueueFullPolicy))
	}
	if l.ConnectTimeout == 0 {
		l.ConnectTimeout = DefaultConnectTimeout
	}
	if l.ReauthGrace == 0 {
		l.ReauthGrace = DefaultReauthGrace
	}
	if l.ConnectTimeout < 0 || l.ReauthGrace < 0 {
		errs = append(errs, errors.New("broker: ConnectTimeout and ReauthGrace must not be negative"))
	}
	if l.MaxRetained == 0 {
		l.MaxRetained = DefaultMaxRetained
	}
	if l.MaxRetainedBytes == 0 {
		l.MaxRetainedBytes = DefaultMaxRetainedBytes
	}
	if l.MaxRetainedPerIdentity == 0 {
		l.MaxRetainedPerIdentity = DefaultMaxRetainedPerIdentity
	}
	if l.MaxRetainedBytesPerIdentity == 0 {
		l.MaxRetainedBytesPerIdentity = DefaultMaxRetainedBytesIdentity
	}
	if l.MaxRetained < 0 || l.MaxRetainedBytes < 0 || l.MaxRetainedPerIdentity < 0 || l.MaxRetainedBytesPerIdentity < 0 {
		errs = append(errs, errors.New("broker: MaxRetained* must not be negative"))
	}
	if l.MaxTopicLength == 0 {
		l.MaxTopicLength = DefaultMaxTopicLength
	}
	if l.MaxTopicLevels == 0 {
		l.MaxTopicLevels = DefaultMaxTopicLevels
	}
	if l.MaxTopicLength < 0 || l.MaxTopicLevels < 0 {
		errs = append(errs, errors.New("broker: MaxTopicLength and MaxTopicLevels must not be negative"))
	}
	if l.PreAuthMaxPacketSize == 0 {
		l.PreAuthMaxPacketSize = DefaultPreAuthMaxPacketSize
	}
	if l.PreAuthMaxPacketSize < 64 {
		errs = append(errs, fmt.Errorf("broker: PreAuthMaxPacketSize %d is too small (minimum 64 bytes)", l.PreAuthMaxPacketSize))
	}
	if l.SysInterval == 0 {
		l.SysInterval = DefaultSysInterval
	}
	return l, errors.Join(errs...)
}

// liveLimits is what SetLimits replaces as a whole: the limits in force
// and the pushback marks derived from them (overload.go).
type liveLimits struct {
	Limits
	// markMsgs is the backlog in messages at which publishers are held
	// back: PushbackMessages, at most MaxQueued; 0 when off. markBytes
	// and markQ0Bytes are the byte marks of queues and of QoS 0
	// backlogs: PushbackBytes, below MaxQueuedBytes and three
	// quarters of Config.MaxOutboundBytes where those are lower (so that
	// publishers are held back before messages are dropped); 0 for none.
	markMsgs, markBytes, markQ0Bytes int64
}

// newLiveLimits derives the marks of l, whose defaults are applied, with
// the outbound byte limit of cfg, which is set at start.
func newLiveLimits(l *Limits, cfg *Config) *liveLimits {
	ll := &liveLimits{Limits: *l}
	if l.PushbackMessages > 0 {
		ll.markMsgs = int64(min(l.PushbackMessages, l.MaxQueued))
		if l.PushbackBytes > 0 {
			ll.markBytes, ll.markQ0Bytes = l.PushbackBytes, l.PushbackBytes
		}
		if q := l.MaxQueuedBytes; q > 0 && (ll.markBytes == 0 || q < ll.markBytes) {
			ll.markBytes = q
		}
		if o := int64(cfg.MaxOutboundBytes - cfg.MaxOutboundBytes/4); ll.markQ0Bytes == 0 || o < ll.markQ0Bytes {
			ll.markQ0Bytes = o
		}
	}
	return ll
}

// limits returns the limits in force. The pointer is replaced, never
// written through, so readers need no lock.
func (s *Server) limits() *liveLimits { return s.lim.Load() }

// Limits returns the limits in force, defaults applied. Safe for
// concurrent use.
func (s *Server) Limits() Limits { return s.limits().Limits }

// SetLimits replaces the limits in force with l, whose zero fields take
// their defaults, after checking it; on error nothing changes. It returns
// the limits now in force. Safe for concurrent use; see Limits for when
// each limit takes effect.
func (s *Server) SetLimits(l Limits) (Limits, error) {
	l, err := l.withDefaults()
	if err != nil {
		return s.Limits(), err
	}
	l.PreAuthMaxPacketSize = min(l.PreAuthMaxPacketSize, s.cfg.MaxPacketSize)
	ll := newLiveLimits(&l, &s.cfg)
	old := s.lim.Swap(ll)
	s.retained.setLimits(&l)
	if ll.markMsgs != old.markMsgs || ll.markBytes != old.markBytes || ll.markQ0Bytes != old.markQ0Bytes ||
		ll.MaxQueued > old.MaxQueued || ll.QueueFullPolicy != old.QueueFullPolicy {
		s.regate()
	}
	s.sysChanged()
	return l, nil
}

// regate lets go the publishers held back at backlogs that no longer
// hold them back under the limits just set: a mark raised or turned off,
// a longer queue, the drop policy in place of block. A lowered mark
// needs nothing: the next message routed to a backlog over it holds its
// publisher back.
func (s *Server) regate() {
	s.sessions.Range(func(_, v any) bool {
		sess := v.(*session)
		sess.mu.Lock()
		if len(sess.gate.waiters) > 0 && !sess.holdsBackLocked(s) {
			sess.gate.wakeAll()
		}
		if c := sess.conn; c != nil {
			c.outMu.Lock()
			if len(c.q0gate.waiters) > 0 && !c.q0OverMarkLocked() {
				c.q0gate.wakeAll()
			}
			c.outMu.Unlock()
		}
		sess.mu.Unlock()
		return true
	})
}

// sysControl is the state of the $SYS publisher (sysLoop), which
// SetLimits starts, stops and re-times.
type sysControl struct {
	mu      sync.Mutex
	running bool          // a sysLoop runs, or is about to
	change  chan struct{} // tells it the interval changed; buffered (1)
}

// sysChanged starts the $SYS publisher when the interval in force is
// positive and none runs, or tells the running one to read the interval
// again. Nothing starts once Shutdown has begun.
func (s *Server) sysChanged() {
	s.sys.mu.Lock()
	defer s.sys.mu.Unlock()
	if s.sys.change == nil {
		s.sys.change = make(chan struct{}, 1)
	}
	if s.sys.running {
		select {
		case s.sys.change <- struct{}{}:
		default: // a change not yet read: it reads the newest interval
		}
		return
	}
	if s.limits().SysInterval <= 0 {
		return
	}
	// Counted under mu, as afterFunc does, so that Shutdown waits for it
	// or it never starts.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.sys.running = true
	s.goroutines.goTracked(goSys, s.sysLoop)
}

// sysStopped reports whether the $SYS publisher is to end because the
// interval in force is not positive; it then counts as stopped.
func (s *Server) sysStopped() bool {
	s.sys.mu.Lock()
	defer s.sys.mu.Unlock()
	if s.limits().SysInterval > 0 {
		return false
	}
	s.sys.running = false
	return true
}

// connectTimeout is the ConnectTimeout in force.
func (s *Server) connectTimeout() time.Duration { return s.limits().ConnectTimeout }

// setLimits replaces the retained store's bounds; retain reads them under
// the same lock, so a publication sees either the old bounds or the new.
func (q *retainedQuota) setLimits(l *Limits) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.maxCount, q.maxBytes = l.MaxRetained, l.MaxRetainedBytes
	q.maxOwnerCount, q.maxOwnerBytes = l.MaxRetainedPerIdentity, l.MaxRetainedBytesPerIdentity
}
