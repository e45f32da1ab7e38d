// Package cluster joins several Moat brokers into one on NATS
// (docs/cluster.md). A Node runs an embedded nats-server with JetStream,
// routed to the other nodes over mutually authenticated TLS, and connects
// to it in process: the NATS client port is open on loopback only and
// requires a random token that exists only in the process's memory. Alternatively
// it connects to an external NATS cluster (Config.NATSURL).
//
// A Node implements broker.Cluster: messages are forwarded between nodes
// on core NATS subjects, one subscription per distinct local filter, so
// NATS's route interest sends each message once to each interested node;
// retained messages live in a JetStream key-value bucket; client-ID claims
// in another, which makes a client connecting on one node take over its
// connection on another.
package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/moatmq/moat/internal/broker"
)

// Config configures a Node. The zero value is not valid: Name and Node are
// required, and either Listen or NATSURL.
type Config struct {
	// Name is the cluster's name; every node of one cluster has the same.
	Name string
	// Node is this node's name, unique in the cluster.
	Node string
	// Listen is the host:port the embedded NATS server accepts routes
	// from the other nodes on (port 0: any free port, see RouteAddr).
	Listen string
	// Peers are the route addresses (host:port) of the other nodes.
	// Listing this node's own address (Listen, as written) too is
	// harmless: Start drops it.
	Peers []string
	// RouteTLS secures the routes: it must hold this node's certificate
	// and the CA pool that verifies the others' (RootCAs, and ClientCAs
	// or VerifyPeerCertificate for the nodes that dial in). A ClientAuth
	// below RequireAnyClientCert is raised to RequireAndVerifyClientCert.
	// Nil: plain routes, which the caller allows only when every address
	// is loopback.
	RouteTLS *tls.Config
	// StoreDir is the JetStream store directory of the embedded server.
	StoreDir string
	// StoreKey is the secret JetStream encrypts the files of StoreDir
	// with (AES-256-GCM, keys derived from it by the NATS server); nil:
	// they are not encrypted. Files written without it are encrypted when
	// the node starts with one.
	StoreKey []byte
	// SyncAlways makes the embedded server fsync every JetStream write
	// before acknowledging it; otherwise it flushes every SyncInterval
	// (0: NATS's default, 2 minutes) and a write is safe, once
	// acknowledged, on the replicas' operating systems: it survives the
	// crash of a node's process or host, not the power loss of every
	// replica at once.
	SyncAlways   bool
	SyncInterval time.Duration
	// NATSURL, when set, connects to an external NATS cluster instead of
	// running an embedded server; Credentials is a NATS credentials file
	// for it ("" for none) and ClientTLS its TLS settings (nil: the
	// system's).
	NATSURL     string
	Credentials string
	ClientTLS   *tls.Config
	// Replicas is the number of copies of the key-value buckets. 0:
	// min(nodes, 3), nodes being 1 + len(Peers).
	Replicas int
	// StreamMaxAge and StreamMaxBytes bound the durable stream of QoS 1/2
	// messages between nodes (durable.go): a node that stays away longer,
	// or falls further behind, loses the oldest. 0: 24 hours and 1 GiB.
	StreamMaxAge   time.Duration
	StreamMaxBytes int64
	// QueueLen is how many messages of other nodes may wait for the
	// broker before NATS drops them (a slow consumer). 0: 65536.
	QueueLen int
	// StartTimeout bounds the start of the embedded server. 0: 10 s.
	StartTimeout time.Duration
	// ShareInterval is how often the node's weight in each shared
	// subscription's queue group follows its members' state (shared.go).
	// 0: 1 s.
	ShareInterval time.Duration
	// Logger receives the cluster's and the NATS server's log lines.
	// Nil: slog.Default().
	Logger *slog.Logger

	// HeartbeatInterval is how often the node tells the others that it is
	// alive and how many clients it has (heartbeat.go); a node not heard
	// from for three intervals is reported down. 0: 2 s.
	HeartbeatInterval time.Duration
	// MarkerTTL is how long the markers of removed keys (a cleared
	// retained message, a forgotten client-ID claim) stay in the
	// key-value buckets, telling nodes that were away what was removed
	// (housekeeping.go). 0: 24 h.
	MarkerTTL time.Duration
	// RetainedSpill is a file where the node keeps its retained changes
	// that wait for the retained bucket, sealed with keys derived from
	// RetainedSpillKey (32 bytes, required then): a node stopped or
	// killed while the cluster was unreachable writes them once it runs
	// again (spill.go). "": they wait in memory only and are lost if
	// the node stops first.
	RetainedSpill    string
	RetainedSpillKey []byte
	// MaxPendingSecurity bounds the distinct bans and shared files whose
	// change waits for the security buckets while they are unreachable
	// (security.go); a change beyond it is refused with
	// ErrSecurityBacklog. 0: 10,000.
	MaxPendingSecurity int
	// Version is this node's software version, shown in the status.
	Version string
	// AdoptAfter is how long another node must have been down (or
	// stopped) before one surviving node adopts its persistent sessions
	// (adopt.go). 0: 60 s; negative: never (sessions then wait for
	// their clients or their node).
	AdoptAfter time.Duration
	// CatchUpIdle is how long a session's catch-up from the stream
	// waits while its queue takes nothing (its client gone, or not
	// acknowledging) before it gives up, and CatchUpMax how long one
	// runs at most (this node's publishers of messages for a moved
	// session wait for it meanwhile): catchup.go. 0: 30 s and 10
	// minutes.
	CatchUpIdle, CatchUpMax time.Duration
	// Now is the clock the node judges other nodes' silence with
	// (heartbeats, adoption). Nil: time.Now. Tests advance it.
	Now func() time.Time
	// CommitTimeout bounds how long a publisher's commit waits for the
	// cluster (the durable stream, a shared subscription's confirmation)
	// before it fails and the publisher is told to send again
	// (persist.go). 0: 20 s.
	CommitTimeout time.Duration

	// advertise replaces the route address the embedded server tells the
	// others (which they dial when they learn of it from a third node):
	// a test that routes the nodes through relays it can cut names an
	// address nobody listens on, so that they use their Peers only.
	advertise string
	// setupAttempt bounds one attempt to create or bind the streams and
	// buckets; a request made before the cluster had a JetStream meta
	// leader is never answered, and the attempt is made again. 0: 5 s;
	// tests, whose clusters start at once, set it shorter.
	setupAttempt time.Duration
}

// setupTimeout returns Config.setupAttempt or its default.
func (n *Node) setupTimeout() time.Duration {
	if n.cfg.setupAttempt > 0 {
		return n.cfg.setupAttempt
	}
	return 5 * time.Second
}

// setupCtx bounds attempt try (0 for the first) of creating or binding
// the streams and buckets. It first waits, for up to one full attempt,
// until the embedded server knows a JetStream meta leader: a request made
// before is never answered, and would cost a whole attempt. Then it
// allows 500 ms, doubled at each attempt up to setupTimeout: nodes started
// together ask for the same stream at the same instant, and the meta
// leader answers one of them while the others' requests go unanswered
// (what the answered one created stays; the others find it when they ask
// again).
func (n *Node) setupCtx(try int) (context.Context, context.CancelFunc) {
	n.awaitMetaLeader(n.setupTimeout())
	return context.WithTimeout(n.ctx, min(n.setupTimeout(), 500*time.Millisecond<<min(try, 4)))
}

// awaitMetaLeader waits, for up to d, until the embedded server knows a
// JetStream meta leader (no wait with an external NATS).
func (n *Node) awaitMetaLeader(d time.Duration) {
	if n.srv == nil {
		return
	}
	deadline := time.Now().Add(d)
	for n.metaLeaderOf() == "" && time.Now().Before(deadline) {
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// maxSubject bounds a subject (encoded topic or filter) well inside the
// embedded server's control line limit (MaxControlLine): a longer line
// would make NATS close the connection.
const maxSubject = 60 << 10

// Node is this broker's membership in a cluster. Start it with Start,
// hand it to the broker as broker.Config.Cluster, connect the two with
// Attach, and Close it after the broker has shut down. Its methods are
// safe for concurrent use.
type Node struct {
	cfg    Config
	log    *slog.Logger
	origin string // node name and a random boot ID: names this run's messages
	srv    *server.Server
	nc     *nats.Conn
	in     chan *nats.Msg // messages of other nodes, in arrival order
	sink   chan *nats.Msg // of the subscriptions made for their interest alone (interestOnly)
	// routes caches the names of the nodes routed to this one for the
	// claims waiting for an old home (askHome).
	routes routeNames
	// recvLast holds, per other node's run, the highest sequence number
	// of its messages handed to the broker (receiveLoop); recvMu guards
	// it and is held while a message is handed over, so that a session
	// given up (handleRelease) knows which of the claiming node's
	// messages it was routed.
	recvMu   sync.Mutex
	recvLast map[string]uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Node starts
	once   sync.Once      // Attach

	// elections ends the requests to a stream's leader under way when
	// it elects another (elections.go).
	elections electionWatch

	subMu sync.Mutex
	subs  map[string][]*nats.Subscription // local filter → its subjects' subscriptions

	pubMu sync.Mutex // orders sequence numbers with publication
	// fwdLog and handLog rate-limit the log lines of messages not
	// forwarded and of shared subscriptions' messages not handed on,
	// readLog those of stream reads made again (getNext), clientLog the
	// NATS client's errors (clientErrors).
	fwdLog, handLog, readLog, clientLog rateLog
	seq                                 uint64

	b        Broker
	kv       *kvState
	ready    chan struct{} // closed once the key-value buckets are in use
	replicas int
	// copiesWarned holds the streams warned of keeping fewer copies than
	// replicas asks (warnFewerCopies), so that each is logged once.
	copiesWarned sync.Map
	// floors caches the readings of this server's copies of consumers
	// (floor.go).
	floors floorCache

	stats counters

	// rmSelf is this node's removal from the cluster, once learned, and
	// hadStore whether its store held JetStream data when it started
	// (remove.go).
	rmSelf   selfRemoval
	hadStore bool

	gc    *nats.Conn // the shared subscriptions' queue groups (shared.go)
	share shareState
	sec   secState // security.go

	// The operations side (heartbeat.go, ops.go, housekeeping.go).
	started time.Time
	beats   beats
	beatMu  sync.Mutex // serializes heartbeat publications
	// saidGoodbye is set once the leaving heartbeat is published; under
	// beatMu.
	saidGoodbye bool
	opsMu       sync.Mutex
	repl        replication
	dupWarned   time.Time
	hk          struct {
		mu        sync.Mutex
		ownPurges map[uint64]struct{} // revisions of this node's retained purge markers
	}
	noMarkerTTL atomic.Bool // the NATS server has no per-message TTLs

	// The durable stream (durable.go) and the Persistence (persist.go).
	dur        durableState
	ic         interestState // interest.go
	dstats     durableCounters
	pub        *publisher
	persist    atomic.Pointer[persistence]
	sess       sessionsState // sessions.go
	readyParts atomic.Int32
	adopt      adoptState // adopt.go
	cw         cleanWills // wills.go
	// sysToken admits this process to the embedded server's system
	// account (remove.go); in memory only.
	sysToken string
}

// Broker is what a Node needs of the broker: *broker.Server.
type Broker interface {
	DeliverRemote(msg *broker.Message) int
	RetainRemote(msg *broker.Message, pub *broker.StoredPublisher)
	RetainedMessages() []*broker.Message
	RetainedMessage(topic string) *broker.Message
	TakeoverRemote(clientID, owner string) (taken, refused bool)
}

var _ broker.Cluster = (*Node)(nil)
var _ Broker = (*broker.Server)(nil)

type counters struct {
	forwarded, forwardErrors, received, duplicates, decodeErrors atomic.Uint64
	retainedOut, retainedIn, claims, takeovers                   atomic.Uint64
	claimsPruned, retainedPurged                                 atomic.Uint64
	secRefused, writesDropped                                    atomic.Uint64
}

// Start validates cfg, starts the embedded NATS server (unless NATSURL is
// set) and connects to it. It does not wait for the other nodes: routes
// and the key-value buckets come up in the background (Ready). The caller
// must Close the Node.
func Start(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// The same peers list on every node is common (NATS's own route
	// lists are written that way): the node's own address among them is
	// not another node. Counted, it would ask a two-node cluster for
	// more copies of the streams (min(nodes, 3)) than it has, which
	// never become ready, and keep every start waiting for a route to
	// itself (awaitRoutes) until routesSettle passed.
	cfg.Peers = slices.DeleteFunc(slices.Clone(cfg.Peers), func(a string) bool { return a == cfg.Listen })
	if cfg.NATSURL == "" && len(cfg.Peers) == 0 {
		// JetStream in cluster mode waits for routes: the embedded
		// server of a node without peers would never get ready.
		return nil, errors.New("cluster: Peers lists no other node (a cluster needs at least two; a single broker needs no cluster)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "cluster")
	boot := make([]byte, 8)
	if _, err := rand.Read(boot); err != nil {
		return nil, err
	}
	qlen := cfg.QueueLen
	if qlen <= 0 {
		qlen = 65536
	}
	n := &Node{cfg: cfg, log: log, origin: cfg.Node + "/" + hex.EncodeToString(boot), in: make(chan *nats.Msg, qlen), sink: make(chan *nats.Msg, 1),
		subs: make(map[string][]*nats.Subscription), ready: make(chan struct{}), started: time.Now(),
		rmSelf: selfRemoval{done: make(chan struct{})}, hadStore: storeInUse(cfg.StoreDir)}
	n.share = shareState{groups: make(map[shareKey]*shareGroup), byQueue: make(map[string]*shareGroup),
		wake: make(chan struct{}, 1), in: make(chan *nats.Msg, qlen), out: make(chan *nats.Msg, qlen)}
	n.share.ack.dir = make(map[string]*dirEntry)
	n.sec = secState{wake: make(chan struct{}, 1), events: make(chan *nats.Msg, 1024), revFloor: map[secKey]uint64{},
		writes: newPendingQueue[secKey, secRecord](cmp.Or(cfg.MaxPendingSecurity, maxPendingSecurity), false)}
	n.dur.init()
	n.ic.wake, n.ic.cache.seed = make(chan struct{}, 1), maphash.MakeSeed()
	n.sess.init()
	n.adopt.start = n.now()
	n.pub = newPublisher(n)
	n.replicas = cfg.Replicas
	if n.replicas <= 0 {
		n.replicas = min(1+len(cfg.Peers), 3)
	}
	if cfg.RetainedSpill != "" {
		sp, err := openSpillOrSetAside(cfg.RetainedSpill, cfg.RetainedSpillKey, log)
		if err != nil {
			return nil, err
		}
		n.kvs().ret.spill = sp
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	var err error
	if cfg.NATSURL != "" {
		err = n.connectExternal()
	} else {
		err = n.startEmbedded()
	}
	if err != nil {
		n.cancel()
		if n.srv != nil {
			n.srv.Shutdown()
			n.srv.WaitForShutdown()
		}
		if sp := n.kvs().ret.spill; sp != nil {
			_ = sp.close()
		}
		return nil, err
	}
	return n, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("cluster: name is required"))
	}
	if c.Node == "" {
		errs = append(errs, errors.New("cluster: node is required"))
	}
	if c.AdoptAfter > 0 && c.AdoptAfter < time.Second {
		errs = append(errs, fmt.Errorf("cluster: AdoptAfter %v is below a second", c.AdoptAfter))
	}
	if c.CatchUpIdle < 0 || c.CatchUpMax < 0 {
		errs = append(errs, fmt.Errorf("cluster: CatchUpIdle %v or CatchUpMax %v is negative", c.CatchUpIdle, c.CatchUpMax))
	}
	if c.RetainedSpill != "" && len(c.RetainedSpillKey) != 32 {
		errs = append(errs, errors.New("cluster: the retained spill needs a 32-byte RetainedSpillKey"))
	}
	if c.MaxPendingSecurity < 0 {
		errs = append(errs, fmt.Errorf("cluster: MaxPendingSecurity %d is negative", c.MaxPendingSecurity))
	}
	if c.NATSURL == "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("cluster: listen %q: %v", c.Listen, err))
		}
		if c.StoreDir == "" {
			errs = append(errs, errors.New("cluster: a store directory is required"))
		}
		for _, p := range c.Peers {
			if _, _, err := net.SplitHostPort(p); err != nil {
				errs = append(errs, fmt.Errorf("cluster: peer %q: %v", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

// startEmbedded runs the embedded server and connects in process.
func (n *Node) startEmbedded() error {
	host, portStr, _ := net.SplitHostPort(n.cfg.Listen)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("cluster: listen port %q: %v", portStr, err)
	}
	if port == 0 {
		port = -1 // nats-server: any free port
	}
	if err := os.MkdirAll(n.cfg.StoreDir, 0o700); err != nil {
		return fmt.Errorf("cluster: %v", err)
	}
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	token := hex.EncodeToString(tok)
	auth, err := newClientAuth(token)
	if err != nil {
		return err
	}
	opts := &server.Options{
		ServerName: n.cfg.Node,
		// The broker connects in process. The client port cannot stay
		// closed (DontListen): nats-server 2.15 starts its routes only
		// once the client accept loop runs. So it listens on loopback
		// only, on a port of the kernel's choosing, and requires a
		// random token made for this run and kept in memory only: no
		// MQTT client, nobody on the network and no other local process
		// can use the NATS client protocol (and with it every message
		// and the cluster's state).
		Host: "127.0.0.1",
		Port: server.RANDOM_PORT,
		// The token check, and the system account's own token for
		// removing a node (remove.go), in clientAuth.
		CustomClientAuthentication: auth,
		NoSigs:                     true,
		JetStream:                  true,
		StoreDir:                   n.cfg.StoreDir,
		// Forwarded MQTT messages may be larger than NATS's 1 MB default.
		MaxPayload:     64 << 20,
		MaxPending:     256 << 20,
		MaxControlLine: 64 << 10, // long MQTT topics make long subjects
		// The stores hold session records and messages: encrypted at
		// rest when the caller gives a key (docs/cluster.md).
		JetStreamKey:    hex.EncodeToString(n.cfg.StoreKey),
		JetStreamCipher: server.AES,
		SyncAlways:      n.cfg.SyncAlways,
		SyncInterval:    n.cfg.SyncInterval,
		// A route lost is reported at its first failed attempt and then
		// once a minute (attempts come every second), not at every
		// attempt of every pooled connection, NATS's default: a node
		// down would fill the log.
		ReconnectErrorReports: 60,
		Cluster: server.ClusterOpts{
			Name:      n.cfg.Name,
			Host:      host,
			Port:      port,
			Advertise: n.cfg.advertise,
		},
	}
	if n.cfg.RouteTLS != nil {
		t := n.cfg.RouteTLS.Clone()
		if t.ClientAuth < tls.RequireAnyClientCert {
			t.ClientAuth = tls.RequireAndVerifyClientCert
		}
		opts.Cluster.TLSConfig = t
		opts.Cluster.TLSTimeout = 5
	}
	for _, p := range n.cfg.Peers {
		opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: p})
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("cluster: %v", err)
	}
	srv.SetLoggerV2(natsLogger{n.log}, false, false, false)
	auth.srv = srv
	n.srv, n.sysToken = srv, auth.sysToken
	srv.Start()
	timeout := n.cfg.StartTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if !srv.ReadyForConnections(timeout) {
		return fmt.Errorf("cluster: the embedded NATS server did not start within %v (is %s free?)", timeout, n.cfg.Listen)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Token(token), nats.Name("moat "+n.cfg.Node),
		nats.MaxReconnects(-1), nats.NoCallbacksAfterClientClose(), nats.NoEcho(), n.clientErrors(), nats.SyncQueueLen(syncQueueLen))
	if err != nil {
		return fmt.Errorf("cluster: connecting to the embedded server: %v", err)
	}
	n.nc = nc
	if err := n.connectGroups(nats.InProcessServer(srv), nats.Token(token), n.clientErrors()); err != nil {
		return err
	}
	n.log.Info("cluster: node started", "cluster", n.cfg.Name, "node", n.cfg.Node, "routes", n.RouteAddr(),
		"peers", n.cfg.Peers, "route_tls", n.cfg.RouteTLS != nil)
	return nil
}

// syncQueueLen is the length of the channel of each synchronous
// subscription of the node's NATS connection. The only ones left are
// those of the replays' batch reads (jetstreamext.GetBatch subscribes
// synchronously for each batch's replies: at most replayBatchMax
// records and the end marker). The library's default, 65,536 (512 KiB
// allocated and zeroed per batch), was a tenth of a node's CPU in a
// storm of claims (docs/performance.md, "Failover storm").
const syncQueueLen = 2 * replayBatchMax

// connectExternal connects to an external NATS cluster.
func (n *Node) connectExternal() error {
	opts := []nats.Option{nats.Name("moat " + n.cfg.Node), nats.MaxReconnects(-1), nats.NoCallbacksAfterClientClose(), nats.NoEcho(),
		n.clientErrors(), nats.SyncQueueLen(syncQueueLen)}
	if n.cfg.Credentials != "" {
		opts = append(opts, nats.UserCredentials(n.cfg.Credentials))
	}
	if n.cfg.ClientTLS != nil {
		opts = append(opts, nats.Secure(n.cfg.ClientTLS))
	}
	nc, err := nats.Connect(n.cfg.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("cluster: connecting to %s: %v", redactURL(n.cfg.NATSURL), err)
	}
	n.nc = nc
	if err := n.connectGroups(opts...); err != nil {
		return err
	}
	n.log.Info("cluster: connected to an external NATS cluster", "cluster", n.cfg.Name, "node", n.cfg.Node,
		"url", redactURL(n.cfg.NATSURL))
	return nil
}

// interestOnly subscribes subj on c for the interest it shows the other
// nodes alone (interest and presence markers, versions, capabilities):
// nothing is published on such subjects. Every such subscription shares
// the one channel n.sink, never read. A synchronous subscription would
// give each a channel of its own of the client's default length (65,536
// entries, 512 KiB allocated and cleared): a node paid that per
// subscription filter of its sessions, and for every new interest
// version, once per SUBSCRIBE or UNSUBSCRIBE that changed its markers. A
// message published on such a subject all the same fills the sink or is
// dropped (the client reports a slow consumer once per subscription).
func (n *Node) interestOnly(c *nats.Conn, subj string) (*nats.Subscription, error) {
	return c.ChanSubscribe(subj, n.sink)
}

// clientErrors sends the NATS client's asynchronous errors (a
// subscription whose channel was full and dropped messages, a
// permission refused) to the node's log, at most one line per
// forwardLogEvery, instead of the client's default, a line on standard
// error. A full channel is reported once until it drains.
func (n *Node) clientErrors() nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
		subject := ""
		if sub != nil {
			subject = sub.Subject
		}
		n.logRated(&n.clientLog, "cluster: NATS client error", "subject", subject, err)
	})
}

// redactURL drops a password from a URL for a log line.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// RouteAddr is the address the embedded server accepts routes on ("" with
// an external NATS).
func (n *Node) RouteAddr() string {
	if n.srv == nil {
		return ""
	}
	if a := n.srv.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Ready is closed once the key-value buckets (retained messages, client
// claims) and the durable message stream are in use: the cluster has a
// JetStream quorum.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Attach connects the Node to the broker and starts its goroutines: the
// delivery of other nodes' messages and the key-value watches. Call it
// once, after broker.New.
func (n *Node) Attach(b Broker) {
	n.once.Do(func() {
		n.b = b
		n.wg.Add(2)
		go func() { defer n.wg.Done(); n.receiveLoop() }()
		go func() { defer n.wg.Done(); n.kvLoop() }()
		// Versions first: a node's queue subscriptions come after its
		// version query (interest.go).
		n.startVersions()
		n.loadGroups()
		n.attachShared(b)
		n.attachSecurity()
		n.startOps()
		n.answerFloors()
		n.startDurable()
	})
}

// Close stops the Node: its goroutines end, the connection closes and
// the embedded server shuts down. Call it after the broker's Shutdown.
func (n *Node) Close() {
	n.flushPending()
	n.sayGoodbye()
	// The acknowledgements owed for what the broker delivered, confirmed
	// by the consumer's leader before the connection closes: the
	// stream's position of this node is then exact when it stops
	// (acks.go).
	// Not when the embedded server has no route left: the streams have
	// no quorum to confirm anything (the last node of a cluster stopping).
	if n.dur.acks != nil && (n.srv == nil || n.srv.NumRemotes() > 0) {
		n.dur.acks.settle(n.ctx, n.nc)
	}
	n.drainRetained()
	n.cancel()
	if n.nc != nil {
		n.nc.Close()
	}
	if n.gc != nil {
		n.gc.Close()
	}
	n.wg.Wait()
	n.closeSpill()
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	}
}

// Interest implements broker.Cluster: one NATS subscription per subject
// of filter, all delivering into one queue so that copies of a message
// through overlapping filters arrive one after another. The filter's
// interest markers (durable.go) are subscribed after these subscriptions,
// on the same connection: on any other node's server a new marker is
// never there without them, so a node that sees the marker and forwards
// a QoS 0 message (interest.go) reaches them.
func (n *Node) Interest(filter string, on bool) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if !on {
		n.markInterest(filter, false)
		for _, s := range n.subs[filter] {
			_ = s.Unsubscribe()
		}
		delete(n.subs, filter)
		return
	}
	defer n.markInterest(filter, true)
	if _, ok := n.subs[filter]; ok {
		return
	}
	var list []*nats.Subscription
	for _, subj := range filterSubjects(filter) {
		if len(subj) > maxSubject {
			n.log.Warn("cluster: filter too long for the cluster; it receives messages of this node only", "length", len(filter))
			continue
		}
		s, err := n.nc.ChanSubscribe(subj, n.in)
		if err != nil {
			n.log.Error("cluster: subscribing failed; messages of other nodes for this filter are not received",
				"filter", filter, "err", err)
			continue
		}
		_ = s.SetPendingLimits(-1, -1)
		list = append(list, s)
	}
	n.subs[filter] = list
}

// Forward implements broker.Cluster: msg is published once, on its
// topic's subject, when another node has interest in it (interest.go);
// NATS delivers it once to each node with interest.
func (n *Node) Forward(msg *broker.Message) {
	if !n.wantsQoS0(msg.Topic) {
		return // no other node wants it (interest.go)
	}
	data, err := encodeMessage(msg, time.Now())
	if err != nil {
		if !errors.Is(err, errExpired) {
			n.forwardFailed("cluster: message not forwarded", msg.Topic, err)
		}
		return
	}
	subj := topicSubject(msg.Topic)
	if len(subj) > maxSubject {
		n.forwardFailed("cluster: topic too long to forward; delivered on this node only", msg.Topic, nil)
		return
	}
	seq, err := n.publishForwarded(subj, data, msg)
	if err != nil {
		n.forwardFailed("cluster: message not forwarded", msg.Topic, err)
		return
	}
	n.noteOwnQoS0(msg, seq) // for a claim under way (sessions.go)
	n.stats.forwarded.Add(1)
}

// forwardedMsg builds the NATS message that carries data, the encoded
// msg, to the other nodes on subj, with the headers every node reads:
// this run's origin and the publisher. The caller numbers it (number).
func (n *Node) forwardedMsg(subj string, data []byte, msg *broker.Message) *nats.Msg {
	m := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{}}
	m.Header[hdrOrigin] = []string{n.origin}
	if msg.From != "" {
		m.Header[hdrFrom] = []string{msg.From}
	}
	return m
}

// number gives m this node's next sequence number; the caller holds
// pubMu.
func (n *Node) number(m *nats.Msg) {
	n.seq++
	m.Header[hdrSeq] = []string{strconv.FormatUint(n.seq, 10)}
}

// publishForwarded publishes data, the encoded msg, on subj (Forward, and
// the shared subscriptions' forwardShared), numbered under pubMu with the
// publication itself: a receiving node drops copies by the numbers, which
// must rise in the order the messages leave.
// It returns the number.
func (n *Node) publishForwarded(subj string, data []byte, msg *broker.Message) (uint64, error) {
	m := n.forwardedMsg(subj, data, msg)
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	n.number(m)
	return n.seq, n.nc.PublishMsg(m)
}

// forwardLogEvery is the least interval between two log lines of failed
// forwarding: a NATS connection that fails fails for every message, and
// a line per message would flood the log at the message rate.
const forwardLogEvery = 10 * time.Second

// forwardFailed counts a message not forwarded to the other nodes and
// logs it, at most once per forwardLogEvery with the number of failures
// not logged since.
func (n *Node) forwardFailed(what, topic string, err error) {
	n.stats.forwardErrors.Add(1)
	n.logRated(&n.fwdLog, what, "topic", topic, err)
}

// logRated logs a failure at Warn through r: at most one line per
// forwardLogEvery, with the failures suppressed since the last line.
func (n *Node) logRated(r *rateLog, what, key, val string, err error) {
	ok, suppressed := r.allow(time.Now(), forwardLogEvery)
	if !ok {
		return
	}
	attrs := []any{key, clip(val)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed, "suppressed_for", forwardLogEvery)
	}
	n.log.Warn(what, attrs...)
}

// rateLog lets one log line through per interval and counts the others,
// which the next line reports. Safe for concurrent use.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were
// suppressed since the last one.
func (r *rateLog) allow(now time.Time, every time.Duration) (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < every {
		r.suppressed++
		return false, 0
	}
	r.last, suppressed, r.suppressed = now, r.suppressed, 0
	return true, suppressed
}

// receiveLoop hands other nodes' messages to the broker in arrival order,
// dropping copies that arrived through overlapping subscriptions: a
// node's sequence numbers rise in the order it published, and one
// connection delivers them in that order.
func (n *Node) receiveLoop() {
	n.recvMu.Lock()
	if n.recvLast == nil {
		n.recvLast = make(map[string]uint64)
	}
	last := n.recvLast // origin → highest sequence number delivered
	n.recvMu.Unlock()
	for {
		var m *nats.Msg
		select {
		case <-n.ctx.Done():
			return
		case m = <-n.in:
		}
		origin := m.Header.Get(hdrOrigin)
		if origin == n.origin {
			continue // our own message (a NATS subscription matched it locally)
		}
		seq, err := strconv.ParseUint(m.Header.Get(hdrSeq), 10, 64)
		if err != nil || origin == "" {
			n.stats.decodeErrors.Add(1)
			continue
		}
		n.recvMu.Lock()
		if seq <= last[origin] {
			n.recvMu.Unlock()
			n.stats.duplicates.Add(1)
			continue
		}
		last[origin] = seq
		msg, err := decodeMessage(m.Data, m.Header.Get(hdrFrom), time.Now())
		if err != nil {
			n.recvMu.Unlock()
			n.stats.decodeErrors.Add(1)
			n.log.Warn("cluster: malformed message from another node dropped", "origin", origin, "err", err)
			continue
		}
		n.stats.received.Add(1)
		n.b.DeliverRemote(msg)
		n.recvMu.Unlock()
	}
}

// natsLogger sends the NATS server's log lines to slog.
type natsLogger struct{ log *slog.Logger }

func (l natsLogger) Noticef(f string, v ...any) { l.log.Info("nats: " + fmt.Sprintf(f, v...)) }
func (l natsLogger) Warnf(f string, v ...any) {
	msg := "nats: " + fmt.Sprintf(f, v...)
	// The embedded server's payload limit is above 8 MB on purpose
	// (forwarded MQTT messages may be as large; docs/cluster.md), so its
	// start-up advice against that is no warning to the operator.
	if strings.HasPrefix(f, "Maximum payloads over") {
		l.log.Debug(msg)
		return
	}
	l.log.Warn(msg)
}
func (l natsLogger) Fatalf(f string, v ...any) { l.log.Error("nats: " + fmt.Sprintf(f, v...)) }
func (l natsLogger) Errorf(f string, v ...any) {
	msg := "nats: " + fmt.Sprintf(f, v...)
	// A route that cannot be dialled is a peer not up yet, the normal
	// state while nodes start in any order: a warning, not an error. The
	// server repeats it only every so many attempts.
	if strings.HasPrefix(f, "Error trying to connect to route") || routeLost(msg) {
		l.log.Warn(msg)
		return
	}
	l.log.Error(msg)
}

// routeLost tells whether a NATS server's error line is a route whose
// peer went away while the server was writing to it (a node killed or
// its host lost): a failure the cluster expects and reports on its own
// (the node's heartbeats stop, `moat cluster status`), logged as a
// warning so that an Error stays worth waking someone for.
func routeLost(msg string) bool {
	if !strings.Contains(msg, " - rid:") {
		return false
	}
	for _, cause := range []string{"connection reset by peer", "broken pipe", "EOF", "use of closed network connection"} {
		if strings.Contains(msg, cause) {
			return true
		}
	}
	return false
}
func (l natsLogger) Debugf(f string, v ...any) { l.log.Debug("nats: " + fmt.Sprintf(f, v...)) }
func (l natsLogger) Tracef(f string, v ...any) { l.log.Debug("nats: " + fmt.Sprintf(f, v...)) }
