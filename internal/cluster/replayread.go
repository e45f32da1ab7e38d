package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// A replay (replaySet.read: a claim, an adoption, a catch-up) reads the
// records of moat_msgs in sequence ranges that end at a sequence the
// stream has committed. It reads them in batches: one direct get with a
// batch size (nats-server 2.11 and later) returns up to
// replayBatchMax records, where a get of the stream's leader returns
// one. Direct gets are answered by any replica of the stream (the
// node's own, when it has one), and a replica may lag behind the
// leader: a batch that ends before the range's end, while the replica
// says it has nothing more, is never taken as "no more records". The
// rest of that reading is then asked of the leader, one record per get
// per subject, as before batches (recordReader.fromLeader).
//
// The batches are asked with orbit.go's jetstreamext.GetBatch. It ends
// a batch without an error when the request times out, and keeps the
// end-of-batch message to itself; the reading relies on neither: it
// ends only on a record at or past its end, and takes the number of
// records pending from the last record of a batch (Nats-Num-Pending).
// It has no "up to" sequence for batches either (nats-server honours
// up_to_seq only for multi_last): the records past the end are dropped.

// The batches of a reading: the first asks for replayBatchFirst records,
// each next one for twice as many, up to replayBatchMax; and the server
// stops a batch once it sent replayBatchBytes (the record that passes
// it included). A reading that stops at its bound (a session's queue
// full, a catch-up's chunk) drops what its last batch read past the
// bound: small first batches keep that waste small, doubling keeps the
// requests few for a long replay, and the bytes keep what one batch
// holds in memory bounded whatever the records' sizes.
const (
	replayBatchFirst = 32
	replayBatchMax   = 256
	replayBatchBytes = 4 << 20
)

// Direct gets need AllowDirect on moat_msgs, and AllowDirect turns
// jetstream.Stream.GetMsg into a direct get: the nodes of earlier builds
// read the records they must not miss (a replay, a gap in their
// consumer's deliveries) with GetMsg, and a replica of theirs that lags
// would answer "not found" for a committed record. So the stream gets
// AllowDirect only once every node reads it from its leader whatever
// the setting (leaderGet), which a node of this build says with the
// marker moat.v.<node>.direct1, subscribed before its presence marker:
// a reading whose batch finds no replica answering sets it
// (allowDirect) when every node the JetStream cluster counts is
// present with that marker (directOK). A node keeps the setting it
// finds as it starts (setupStream); one of an earlier build turns it
// off as it starts (its configuration lacks it), and then readings go
// to the leader until it is gone. With an external NATS, whose
// interest a node cannot see, it is never set by a node.
//
// Each node also tries once a second, from its start until it has seen
// the setting (monitorPeers): else the first reading of a fresh cluster
// (a session's first move, often) found the stream without it and read
// every record with its own request to the leader (a move of about
// 1,300 records took up to 2 s in the kill series of 2026-12-06).
const capDirect = ".direct1"

// directRetry is how long a node waits after an AllowDirect update it
// tried (or found not allowed) before it tries again.
const directRetry = time.Minute

// directOK tells whether every node of the cluster reads moat_msgs
// from its leader whatever its AllowDirect: each node the JetStream
// cluster counts is present now with the direct marker (a node away
// may come back with an earlier build).
func (n *Node) directOK() bool {
	if n.srv == nil {
		return false
	}
	peers := *n.dur.peers.Load()
	if len(peers) < int(n.dur.expected.Load()) {
		return false
	}
	acc := n.srv.GlobalAccount()
	for _, p := range peers {
		key := p[len(markerPrefix) : len(p)-1]
		if acc.Interest(p+presenceToken) == 0 || acc.Interest(capPrefix+key+capDirect) == 0 {
			return false
		}
	}
	return true
}

// allowDirect sets AllowDirect on moat_msgs if every node allows it
// (directOK), tried at most once per directRetry; the readings after
// it use batches. A call while some node does not allow it counts for
// nothing: the next may try. The update runs on a goroutine of the
// node: the reading that calls it may hold routeMu, and goes on from
// the leader.
func (n *Node) allowDirect() {
	now := n.now().UnixNano()
	next := n.dur.directNext.Load()
	if now < next || !n.directOK() || !n.dur.directNext.CompareAndSwap(next, now+int64(directRetry)) {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.setAllowDirect(n.ctx)
	}()
}

// setAllowDirect sets AllowDirect on moat_msgs, waiting at most
// getAttempt.
func (n *Node) setAllowDirect(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, getAttempt)
	defer cancel()
	js, err := jetstream.New(n.nc)
	if err != nil {
		return
	}
	info, err := n.msgStream().Info(ctx)
	if err == nil && info.Config.AllowDirect {
		n.dur.directSeen.Store(true)
		return
	}
	if err == nil {
		cfg := info.Config
		cfg.AllowDirect = true
		_, err = js.UpdateStream(ctx, cfg)
	}
	if err != nil {
		n.log.Info("cluster: allowing direct gets on the durable stream failed; replays read one record per request", "err", err)
		return
	}
	n.dur.directSeen.Store(true)
	n.log.Info("cluster: direct gets allowed on the durable stream; replays read it in batches")
}

// getAttempt bounds one request of a reading (a batch, a get): one that
// reached a replica or a leader as it went, or a stream electing its
// leader, is tried again (getNext) or asked of the leader (fill).
const getAttempt = 3 * time.Second

// recordReader reads the records of moat_msgs with sequences from next
// to to (a committed sequence), in stream order, whose subjects match
// one of subjects. Not safe for concurrent use; one per reading.
type recordReader struct {
	n        *Node
	js       jetstream.JetStream
	subjects []string
	next, to uint64
	batch    int                       // the records the next batch asks for
	buf      []*jetstream.RawStreamMsg // read, not yet returned
	// leader: the rest is read from the stream's leader (a batch came
	// from a lagging replica, or direct gets are not answered); heads
	// hold the next record of each subject (nil: none up to to), read
	// once headsRead.
	leader    bool
	heads     []*jetstream.RawStreamMsg
	headsRead bool
	// batches and gets count the requests made: batches of direct gets,
	// and gets of the leader.
	batches, gets int
}

func newRecordReader(n *Node, subjects []string, from, to uint64) (*recordReader, error) {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return nil, err
	}
	return &recordReader{n: n, js: js, subjects: subjects, next: max(from, 1), to: to, batch: replayBatchFirst}, nil
}

// read returns the next record, nil once there is none up to to.
func (r *recordReader) read(ctx context.Context) (*jetstream.RawStreamMsg, error) {
	for {
		if len(r.buf) > 0 {
			m := r.buf[0]
			r.buf[0] = nil
			r.buf = r.buf[1:]
			return m, nil
		}
		if r.next > r.to {
			return nil, nil
		}
		if r.leader {
			return r.fromLeader(ctx)
		}
		if err := r.fill(ctx); err != nil {
			return nil, err
		}
	}
}

// fill reads one batch from r.next (every subject: those of the
// records not on r.subjects are dropped here). The reading ends only
// on a record at or past r.to: the replica that answered had applied
// r.to, and every record before it. A batch that ends short of r.to
// with records still pending (replayBatchBytes, its size, a timeout)
// is followed by the next one. Anything else switches the rest of the
// reading to the leader: a batch that ends short of r.to with nothing
// pending after it, or that finds nothing, came from a replica that
// has not applied r.to yet (r.to is committed, and the stream's limits
// remove its oldest records, never its newest) or met a purge; a batch
// that fails had its direct gets unanswered (a stream of an earlier
// build, without AllowDirect, or one an earlier build's node set back),
// or a reply the library does not take.
func (r *recordReader) fill(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, getAttempt)
	defer cancel()
	size := r.batch
	if span := r.to - r.next + 1; span < uint64(size) {
		size = int(span)
	}
	r.batch = min(2*r.batch, replayBatchMax)
	r.batches++
	msgs, err := jetstreamext.GetBatch(bctx, r.js, streamMsgs, size,
		jetstreamext.GetBatchSeq(r.next), jetstreamext.GetBatchMaxBytes(replayBatchBytes))
	var pending uint64
	got := false
	if err == nil {
		for m, merr := range msgs {
			if merr != nil {
				err = merr
				break
			}
			if m.Sequence < r.next {
				err = fmt.Errorf("record %d in a batch from %d", m.Sequence, r.next)
				break
			}
			if m.Sequence > r.to {
				r.next = r.to + 1
				return nil
			}
			got = true
			r.next = m.Sequence + 1
			pending, _ = strconv.ParseUint(m.Header.Get(server.JSNumPending), 10, 64)
			if r.matches(m.Subject) {
				r.buf = append(r.buf, m)
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if r.next > r.to || got && pending > 0 {
		return nil
	}
	r.leader = true
	if errors.Is(err, nats.ErrNoResponders) {
		// No replica answers: the stream lacks AllowDirect.
		r.n.allowDirect()
	}
	if err != nil && !errors.Is(err, jetstreamext.ErrNoMessages) {
		r.n.log.Debug("cluster: a batch of the durable stream failed; read from its leader", "from", r.next, "to", r.to, "err", err)
	} else {
		r.n.log.Debug("cluster: a batch of the durable stream ended before a committed record; read from its leader",
			"from", r.next, "to", r.to)
	}
	return nil
}

// matches tells whether the records of subject are read.
func (r *recordReader) matches(subject string) bool {
	for _, s := range r.subjects {
		if server.SubjectMatchesFilter(subject, s) {
			return true
		}
	}
	return false
}

// fromLeader returns the next record read from the stream's leader:
// the first one on each subject from r.next, merged by sequence (a
// record may be on several).
func (r *recordReader) fromLeader(ctx context.Context) (*jetstream.RawStreamMsg, error) {
	if r.heads == nil {
		r.heads = make([]*jetstream.RawStreamMsg, len(r.subjects))
	}
	st := r.n.msgStream()
	for i, h := range r.heads {
		if r.headsRead && (h == nil || h.Sequence >= r.next) {
			continue
		}
		m, err := r.n.getNext(ctx, st, r.subjects[i], r.next, r.to)
		if err != nil {
			return nil, err
		}
		r.gets++
		r.heads[i] = m
	}
	r.headsRead = true
	var m *jetstream.RawStreamMsg
	for _, h := range r.heads {
		if h != nil && (m == nil || h.Sequence < m.Sequence) {
			m = h
		}
	}
	if m == nil {
		r.next = r.to + 1
		return nil, nil
	}
	r.next = m.Sequence + 1
	return m, nil
}

// leaderGet returns the first message of the stream named stream with a
// sequence from seq on, on a subject matching filter ("": any), as its
// leader has it: jetstream.ErrMsgNotFound if there is none. The request
// goes to the leader ($JS.API.STREAM.MSG.GET) whatever the stream's
// AllowDirect: with it, jetstream.Stream.GetMsg asks any replica, one
// that lags answering "not found" for a committed record.
func (n *Node) leaderGet(ctx context.Context, stream string, seq uint64, filter string) (*jetstream.RawStreamMsg, error) {
	return n.leaderMsg(ctx, stream, struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj,omitempty"`
	}{seq, filter})
}

// leaderLast returns the last message of the stream named stream on
// subject, as its leader has it: jetstream.ErrMsgNotFound if there is
// none (see leaderGet).
func (n *Node) leaderLast(ctx context.Context, stream, subject string) (*jetstream.RawStreamMsg, error) {
	return n.leaderMsg(ctx, stream, struct {
		LastFor string `json:"last_by_subj"`
	}{subject})
}

// leaderMsg asks the leader of the stream named stream for the message
// the request body names.
func (n *Node) leaderMsg(ctx context.Context, stream string, body any) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	reply, err := n.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     uint16 `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Subject  string    `json:"subject"`
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs"`
			Data     []byte    `json:"data"`
			Time     time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("cluster: a get of stream %s: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == uint16(server.JSNoMessageFoundErr) {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("cluster: a get of stream %s: %s (%d, %d)", stream, resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("cluster: a get of stream %s: %w", stream, jetstream.ErrInvalidJetStreamResponse)
	}
	out := &jetstream.RawStreamMsg{Subject: resp.Message.Subject, Sequence: resp.Message.Sequence, Data: resp.Message.Data,
		Time: resp.Message.Time}
	if len(resp.Message.Header) > 0 {
		if out.Header, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// recordGetter reads the record of moat_msgs at a sequence
// (Node.msgRecord).
type recordGetter func(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error)

// msgRecord returns the record of moat_msgs at seq as the stream's
// leader has it: jetstream.ErrMsgNotFound if it is not in the stream
// (never in it, or deleted).
func (n *Node) msgRecord(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := n.leaderGet(ctx, streamMsgs, seq, "")
	if err == nil && m.Sequence != seq {
		return nil, jetstream.ErrMsgNotFound
	}
	return m, err
}
