package cluster

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cumulative acknowledgements of the durable stream (docs/cluster.md,
// "Acknowledgements"). A node's consumer acknowledges with AckAll: one
// acknowledgement of a record covers every record of the stream before
// it. A replicated consumer writes each acknowledgement it receives into
// its own Raft log, on every replica, so acknowledging a run of records
// at once saves one replicated write per record.
//
// The guarantee stays that of an acknowledgement per record: a record is
// covered only once it and every record before it that the consumer
// delivers are in the local sessions and committed. Records are known by
// their stream sequence, which a record delivered again keeps. A
// sequence missing between the floor and a later record is waited for
// (the consumer delivered it and it was lost on its way: a reader
// stopped, a connection cut; or it is one a node that died had
// delivered), since the consumer delivers it again after its AckWait;
// it is passed over only once the stream reports it gone. Records that
// leave the stream (its limits, a purge) while pending are counted as
// acknowledged by the server itself, which raises the consumer's
// acknowledgement floor: the floor is adopted while the node waits
// (run). A node that dies before the acknowledgement is sent gets the
// uncovered records again when it comes back: delivered twice at worst,
// never skipped.
const (
	// ackEvery is the most records one acknowledgement waits for, and
	// ackWindow the longest a finished run waits for more.
	ackEvery  = 128
	ackWindow = 20 * time.Millisecond
	// ackCheck is how often records held back are looked at (run), and
	// gapChecks the most missing sequences looked up in the stream at
	// each look.
	ackCheck  = time.Second
	gapChecks = 1024
)

type ackEntry struct {
	m            jetstream.Msg
	done, failed bool
}

// ackQueue tracks the records delivered to this node's consumer and not
// yet covered by an acknowledgement, by stream sequence.
type ackQueue struct {
	mu      sync.Mutex
	floor   uint64 // every record up to this one is finished or covered
	entries map[uint64]*ackEntry
	last    jetstream.Msg // the record at floor, if its acknowledgement is owed
	lastSeq uint64        // its sequence
	owed    int           // finished records the owed acknowledgement covers
	// sent is the reply subject of the last acknowledgement sent, of
	// the record sentSeq (settle sends it again, confirmed).
	sent    string
	sentSeq uint64
	cons    jetstream.Consumer // the consumer read (run)
	high    uint64             // the highest sequence admitted
	bound   bool               // bind ran: floor is this run's
	kick    chan struct{}
	// floorPast is a consumer acknowledgement floor that resolve found
	// past records never delivered here in this run: the consumer's
	// reader reads them from the stream and then adopts it
	// (handleDurable, routeUnrouted); 0 for none.
	floorPast atomic.Uint64
	// get reads a record of the stream as its leader has it
	// (Node.msgRecord: a replica that lags says "not found" of a record
	// not deleted); set before run starts. nil: the stream's GetMsg (a
	// stream without AllowDirect asks its leader).
	get recordGetter
	// gapBatches and gapGets count the requests of the readings of
	// records never delivered here (fillGap): batches of direct gets,
	// and gets of the stream's leader.
	gapBatches, gapGets atomic.Uint64
	// gapWait, for tests, bounds the reading of a gap in place of the
	// constant gapWait when set (nanoseconds): a test that reads a gap
	// on a loaded machine, under the race detector, does not depend on
	// its time.
	gapWait atomic.Int64
	// gapHold, for tests, replaces the constant gapHold when set
	// (nanoseconds); gapFail, for tests, makes a reading of a gap fail
	// at once with the error it returns (nil: read).
	gapHold atomic.Int64
	gapFail atomic.Pointer[func() error]
	// gapRetries counts the readings of gaps tried again (fillGap).
	gapRetries atomic.Uint64
}

func newAckQueue() *ackQueue {
	return &ackQueue{entries: make(map[uint64]*ackEntry), kick: make(chan struct{}, 1)}
}

// bind (re)starts the reading of the consumer at its acknowledgement
// floor as its leader knows it now. It is called each time the node
// starts reading the consumer.
func (q *ackQueue) bind(ci *jetstream.ConsumerInfo) {
	q.adopt(ci.AckFloor.Stream)
	q.mu.Lock()
	q.bound = true
	q.mu.Unlock()
}

// unrouted returns the runs of sequences after the floor up to floor
// (the consumer's acknowledgement floor, about to be adopted by bind)
// that were never delivered here in this run, at most limit sequences
// past the floor; none before the first bind (the floor is the
// consumer's then, and what lies below it an earlier run routed).
func (q *ackQueue) unrouted(floor uint64, limit int) []seqRange {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.bound || floor <= q.floor || floor-q.floor > uint64(limit) {
		return nil
	}
	return q.absentLocked(q.floor+1, floor)
}

// absentLocked returns the runs of sequences from from to to that have
// no entry (never delivered here, nor passed over). The caller holds mu.
func (q *ackQueue) absentLocked(from, to uint64) []seqRange {
	var out []seqRange
	for s := from; s <= to; s++ {
		if q.entries[s] != nil {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].to == s-1 {
			out[k].to = s
		} else {
			out = append(out, seqRange{s, s})
		}
	}
	return out
}

// admit tells whether the record m, of stream sequence seq, is to be
// routed: not when an earlier delivery of the same record is being
// routed (its acknowledgement follows) or is finished (idem). A record
// already covered (its acknowledgement was lost, or is owed) is
// acknowledged again at once: everything up to it is finished.
func (q *ackQueue) admit(m jetstream.Msg, seq uint64) bool {
	q.mu.Lock()
	if seq <= q.floor {
		q.mu.Unlock()
		_ = m.Ack()
		return false
	}
	if e, ok := q.entries[seq]; ok {
		if !e.failed {
			q.mu.Unlock()
			return false
		}
		e.m, e.failed = m, false
		q.mu.Unlock()
		return true
	}
	q.entries[seq] = &ackEntry{m: m}
	q.high = max(q.high, seq)
	q.mu.Unlock()
	return true
}

// finish ends the routing of record seq. A record that failed is asked
// again after a while (NAK), and holds the floor until it is finished;
// one that succeeded may move the floor, and the floor's acknowledgement
// is sent once ackEvery records wait for it, or by run after ackWindow.
func (q *ackQueue) finish(seq uint64, ok bool) {
	q.mu.Lock()
	e := q.entries[seq]
	if seq != 0 && (e == nil || e.done) {
		q.mu.Unlock()
		return
	}
	switch {
	case e == nil:
		// adopt: only the floor moves.
	case !ok:
		e.failed = true
		m := e.m
		q.mu.Unlock()
		_ = m.NakWithDelay(time.Second)
		return
	default:
		e.done = true
	}
	for {
		next := q.floor + 1
		f := q.entries[next]
		if f == nil || !f.done {
			break
		}
		delete(q.entries, next)
		q.floor = next
		if ackable(f.m) {
			q.last, q.lastSeq = f.m, next
		}
		q.owed++
	}
	if q.owed >= ackEvery && q.last != nil {
		m := q.takeOwedLocked()
		q.mu.Unlock()
		_ = m.Ack()
		return
	}
	owed := q.owed > 0
	q.mu.Unlock()
	if owed {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// takeOwedLocked returns the record whose acknowledgement is owed (nil
// if none), noted as the last one sent.
func (q *ackQueue) takeOwedLocked() jetstream.Msg {
	m := q.last
	if m != nil {
		q.sent, q.sentSeq = m.Reply(), q.lastSeq
	}
	q.last, q.owed = nil, 0
	return m
}

// flush sends the owed acknowledgement, if any.
func (q *ackQueue) flush() {
	q.mu.Lock()
	m := q.takeOwedLocked()
	q.mu.Unlock()
	if m != nil {
		_ = m.Ack()
	}
}

// settleWait bounds settle: a clean stop waits no longer for the
// consumer's leader (a leader being elected; past it, the records not
// covered are delivered again, twice at worst).
const settleWait = 3 * time.Second

// settle makes the consumer's acknowledgement floor exact as the node
// stops cleanly. A plain acknowledgement is not confirmed: sent while
// the consumer's leader changes, or just before the connection closes,
// it may never reach the leader, and a claim of a session of this node
// on another node would then replay, from the older floor, messages its
// client already had. So the last acknowledgement (the owed one, or the
// last sent) is sent again as a request the leader answers once it has
// applied it, until answered, and the floor is read back until the
// leader reports it (at most settleWait in all).
func (q *ackQueue) settle(ctx context.Context, nc *nats.Conn) {
	q.mu.Lock()
	q.takeOwedLocked()
	reply, seq, cons := q.sent, q.sentSeq, q.cons
	q.mu.Unlock()
	if reply == "" || nc == nil || cons == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, settleWait)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := nc.RequestWithContext(rctx, reply, []byte("+ACK"))
		rcancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond): // no leader yet
		}
	}
	for {
		ici, icancel := context.WithTimeout(ctx, 500*time.Millisecond)
		ci, err := cons.Info(ici)
		icancel()
		if err == nil && ci.AckFloor.Stream >= seq {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// adopt moves the floor up to floor: the consumer's acknowledgement
// floor as its leader reports it (records up to it were acknowledged by
// this node, nothing else acknowledges its consumer, or left the stream
// while pending, which the server counts as acknowledged), or the
// sequence before the stream's first (records gone). None of the records
// up to it is waited for any more.
func (q *ackQueue) adopt(floor uint64) {
	q.mu.Lock()
	if floor > q.floor {
		q.floor = floor
		for seq := range q.entries {
			if seq <= floor {
				delete(q.entries, seq)
			}
		}
	}
	q.mu.Unlock()
	q.finish(0, true) // move on past what is finished after it
}

// skip passes over seq, missing from the stream, if the floor waits for
// it.
func (q *ackQueue) skip(seq uint64) {
	q.mu.Lock()
	if q.floor+1 == seq && q.entries[seq] == nil {
		q.floor = seq
	}
	q.mu.Unlock()
	q.finish(0, true)
}

// seqRange is the stream sequences from from to to.
type seqRange struct{ from, to uint64 }

// missing returns the sequences before seq, after the floor and the
// highest one admitted, that were never delivered here, as runs in
// stream order, when there are some and the span is at most limit
// sequences (none otherwise). Those before the highest admitted were
// looked at when it arrived. A sequence between two runs is being
// routed or finished (admitted, or gone).
func (q *ackQueue) missing(seq uint64, limit int) []seqRange {
	q.mu.Lock()
	defer q.mu.Unlock()
	lo := max(q.floor, q.high)
	if seq <= lo+1 || seq-lo-1 > uint64(limit) {
		return nil
	}
	return q.absentLocked(lo+1, seq-1)
}

// gone passes over the sequences from from to to, which the stream no
// longer holds, wherever they lie after the floor (fillGap).
func (q *ackQueue) gone(from, to uint64) {
	q.mu.Lock()
	for seq := max(from, q.floor+1); seq <= to; seq++ {
		if q.entries[seq] == nil {
			q.entries[seq] = &ackEntry{done: true}
		}
	}
	q.mu.Unlock()
	q.finish(0, true)
}

// stalled tells whether records wait behind the one after the floor,
// which is not being routed (failed, or never delivered here), while the
// floor stayed at last.
func (q *ackQueue) stalled(last uint64) (floor uint64, stalled bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.floor != last || len(q.entries) == 0 {
		return q.floor, false
	}
	next := q.entries[q.floor+1]
	return q.floor, next == nil || next.failed
}

// gap returns the sequence after the floor when records wait behind it
// and it was never delivered here; 0 when there is none.
func (q *ackQueue) gap() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.entries) == 0 || q.entries[q.floor+1] != nil {
		return 0
	}
	return q.floor + 1
}

// run sends the owed acknowledgement ackWindow after a run of records
// finished, until ctx ends (then once more). Every ackCheck while
// records wait behind one that is not being routed, it looks for records
// that left the stream: it adopts the consumer's acknowledgement floor
// (records removed while pending), and the sequence before the stream's
// first, and passes over each missing sequence after the floor that the
// stream does not hold (deleted). A sequence the stream still holds is
// waited for: the consumer delivers it again.
func (q *ackQueue) run(ctx context.Context, cons jetstream.Consumer, st jetstream.Stream) {
	q.mu.Lock()
	q.cons = cons
	q.mu.Unlock()
	t := time.NewTimer(time.Hour)
	t.Stop()
	check := time.NewTicker(ackCheck)
	defer check.Stop()
	defer q.flush()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
			floor, stalled := q.stalled(last)
			last = floor
			if stalled {
				q.resolve(ctx, cons, st)
			}
			continue
		case <-q.kick:
		}
		t.Reset(ackWindow)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		q.flush()
	}
}

// resolve moves the floor past the records that left the stream (run).
func (q *ackQueue) resolve(ctx context.Context, cons jetstream.Consumer, st jetstream.Stream) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ci, err := cons.Info(ctx); err == nil {
		if len(q.unrouted(ci.AckFloor.Stream, gapFill)) > 0 {
			// Records this run never routed lie below it: the reader
			// routes them before the floor is taken (floorPast).
			q.floorPast.Store(ci.AckFloor.Stream)
		} else {
			q.adopt(ci.AckFloor.Stream)
		}
	}
	if si, err := st.Info(ctx); err == nil && si.State.FirstSeq > 0 {
		q.adopt(si.State.FirstSeq - 1)
	}
	for range gapChecks {
		gap := q.gap()
		if gap == 0 {
			return
		}
		if _, err := q.getRecord(ctx, st, gap); !errors.Is(err, jetstream.ErrMsgNotFound) {
			return // still in the stream (or not known): delivered again
		}
		q.skip(gap)
	}
}

// getRecord reads the record at seq of st (see get).
func (q *ackQueue) getRecord(ctx context.Context, st jetstream.Stream, seq uint64) (*jetstream.RawStreamMsg, error) {
	if q.get != nil {
		return q.get(ctx, seq)
	}
	return st.GetMsg(ctx, seq)
}

// gapFill bounds the records read from the stream before a record that
// arrived past records never delivered here (fillGap): those of a pull
// request lost with a consumer's leader, or with a connection, or those
// a node that died had pending. A larger gap waits for the consumer to
// deliver it again. gapWait bounds one reading of a gap; one that fails
// (the stream without a leader, say) or is cut at gapWait is tried again
// every gapRetry for up to gapHold, and gapPause is how long no gap is
// read after that ran out.
//
// The consumer's reader routes nothing else while it reads a gap, and
// a reading cut at gapWait is tried again for the rest of its gap,
// holding the record that arrived and every later one: the bound is what a
// reading in batches of direct gets (recordReader: 256 records, at most
// 4 MiB, per request) routes well within gapWait. On two cores shared
// with other builds (load 2 to 10), readings of 8,192 records took 0.15
// to 0.56 s on average, and one in about 35 was cut at gapWait during a
// burst of load; of 16,384, 0.37 to 0.5 s, but three in about 15 were
// cut (BenchmarkGapFill, docs/performance.md). Records routed into many
// sessions cost more than these, routed into none. 512 read one get of
// the leader at a time, as before batches, took 44 to 264 ms. Memory
// does not grow with the bound: records are routed as they are read,
// one batch held at a time, and missing keeps runs, not sequences.
const (
	gapFill  = 8192
	gapWait  = 2 * time.Second
	gapPause = 5 * time.Second
	gapRetry = 250 * time.Millisecond
	gapHold  = consumerAckWait
)

// routeUnrouted reads from the stream, and routes in order, the records
// up to floor, the acknowledgement floor the consumer reports as this
// node reads it again (consumeLoop, before bind adopts it), that this
// run never had delivered. The node acknowledges only what it routed,
// so such a floor means the consumer lost their delivery: its leader
// died as it delivered them, and the new leader's state had them
// neither pending nor unacknowledged (an outside kill series lost 2
// acknowledged messages so, the record in the stream and the consumer's
// floor past it). Adopted without this, they were passed over for good.
// Called by the consumer's reader only, like fillGap (the floor resolve
// finds so is handed to it: floorPast); bounded like it (gapFill, and
// tried again up to gapHold, readRetried): what it cannot read is passed
// over (logged).
func (n *Node) routeUnrouted(floor uint64) {
	acks := n.dur.acks
	start := time.Now()
	read, tries, err := n.readRetried(func() []seqRange { return acks.unrouted(floor, gapFill) }, func(from uint64, err error) {
		n.log.Info("cluster: records the durable consumer counts as acknowledged that this node never routed could not be read; tried again",
			"from", from, "floor", floor, "err", err)
	})
	if err != nil {
		n.log.Warn("cluster: records the durable consumer counts as acknowledged that this node never routed could not be read in time; they are passed over",
			"floor", floor, "tries", tries, "err", err)
	}
	if read > 0 {
		n.dstats.streamUnrouted.Add(uint64(read))
		n.log.Info("cluster: records the durable consumer counts as acknowledged that this node never routed read from the stream",
			"count", read, "floor", floor, "tries", tries, "took", time.Since(start).Round(time.Millisecond))
	}
}

// fillGap reads from the stream, and routes in order, the records
// between the acknowledgement floor and seq that the consumer never
// delivered here, before the record seq that it delivered after them is
// routed. Left to the consumer, which delivers such a record again only
// after its AckWait (10 s), a record lost on its way reached its
// sessions after the later ones, breaking each publisher's order
// [MQTT-4.6.0-6]. A record read this way is acknowledged with the next
// one the consumer delivers (AckAll); its delivery again by the consumer
// is ignored or acknowledged (admit). Called by the consumer's reader
// only.
//
// Each run of missing sequences is read as a range, in batches
// (readGap); the records are routed as they come, so one batch at most
// is held. A reading that fails (the stream without a leader, as when
// the node that led it and this node's consumer died) or outlasts
// gapWait is tried again every gapRetry for what is still missing,
// seq and every later record held meanwhile, for up to gapHold: the
// consumer's AckWait, after which it has delivered again what it had
// sent and lost. Only past that is the rest of the gap left to the
// consumer, the later records routed, and no gap read for gapPause.
func (n *Node) fillGap(seq uint64) {
	acks := n.dur.acks
	if time.Now().Before(n.dur.gapRest) {
		return
	}
	start := time.Now()
	read, tries, err := n.readRetried(func() []seqRange { return acks.missing(seq, gapFill) }, func(from uint64, err error) {
		n.log.Info("cluster: records missing from the durable consumer's delivery could not be read from the stream; the later ones wait while it is tried again",
			"from", from, "before", seq, "err", err)
	})
	if err != nil {
		n.dur.gapRest = time.Now().Add(gapPause)
		n.log.Warn("cluster: records missing from the durable consumer's delivery could not be read from the stream in time; they follow when the consumer delivers them again, after later ones",
			"before", seq, "tries", tries, "err", err)
	}
	if read > 0 {
		n.log.Info("cluster: records never delivered by the durable consumer read from the stream",
			"count", read, "before", seq, "tries", tries, "took", time.Since(start).Round(time.Millisecond))
	}
}

// readRetried reads and routes, in order, the runs of sequences runs
// returns (asked again before each try, for what is still missing), for
// the consumer's reader: a reading that fails or outlasts gapWait is
// tried again every gapRetry, the reader holding everything after it,
// until gapHold has passed since the first (failed, told once the first
// fails, with the first sequence missing). A node cut off meanwhile
// routes nothing until it is back and has checked its sessions
// (handleDurable): the tries wait for that. It returns the records
// routed, the tries made, and the error of the last when it gave up.
func (n *Node) readRetried(runs func() []seqRange, failed func(from uint64, err error)) (read, tries int, err error) {
	acks := n.dur.acks
	wait, hold := gapWait, gapHold
	if d := acks.gapWait.Load(); d > 0 {
		wait = time.Duration(d)
	}
	if d := acks.gapHold.Load(); d > 0 {
		hold = time.Duration(d)
	}
	start := time.Now()
	for {
		rs := runs()
		if len(rs) == 0 {
			return read, tries, nil
		}
		tries++
		k, err := n.readGaps(rs, wait)
		read += k
		if err == nil {
			return read, tries, nil
		}
		if tries == 1 {
			failed(rs[0].from, err)
		}
		if n.ctx.Err() != nil || time.Since(start) >= hold {
			return read, tries, err
		}
		acks.gapRetries.Add(1)
		t := time.NewTimer(gapRetry)
		select {
		case <-t.C:
		case <-n.ctx.Done():
			t.Stop()
		}
		if !n.awaitRouting() {
			return read, tries, n.ctx.Err()
		}
	}
}

// readGaps reads and routes the records of runs in order (readGap),
// within wait or until the stream elects another leader (a request to
// one that died is never answered: fillGap tries again), and returns
// how many it routed and why it stopped short.
func (n *Node) readGaps(runs []seqRange, wait time.Duration) (int, error) {
	ctx, done := n.elections.attempt(n.ctx, streamMsgs, wait)
	defer done()
	if f := n.dur.acks.gapFail.Load(); f != nil {
		if err := (*f)(); err != nil {
			return 0, err
		}
	}
	read := 0
	for _, run := range runs {
		k, err := n.readGap(ctx, run)
		read += k
		if err != nil {
			return read, err
		}
	}
	return read, nil
}

// readGap reads and routes the records of run, which were never
// delivered here, in stream order, and passes over the sequences of run
// the stream's leader reports gone. It returns how many records it
// routed.
//
// The records come in batches of direct gets (recordReader), which a
// replica may answer, and a replica that lags behind the leader has
// fewer records: the reader then reads the rest from the leader, but a
// sequence a batch went past is passed over only once the leader
// reports it gone (passOver), as the one-by-one reading did: a record
// taken for gone is lost to this node's sessions.
func (n *Node) readGap(ctx context.Context, run seqRange) (int, error) {
	acks := n.dur.acks
	r, err := newRecordReader(n, []string{durablePrefix + ">"}, run.from, run.to)
	if err != nil {
		return 0, err
	}
	defer func() {
		acks.gapBatches.Add(uint64(r.batches))
		acks.gapGets.Add(uint64(r.gets))
	}()
	read := 0
	route := func(raw *jetstream.RawStreamMsg) {
		n.dur.gapsRead.Add(1)
		read++
		fm := &fetchedRecord{raw: raw}
		if acks.admit(fm, raw.Sequence) {
			n.routeRecord(fm, raw.Header.Get(hdrOrigin), raw.Sequence)
		}
	}
	next := run.from // the first sequence neither routed nor passed over
	for {
		m, err := r.read(ctx)
		if err != nil {
			return read, err
		}
		end := run.to
		if m != nil {
			end = m.Sequence - 1
		}
		if next <= end {
			if err := n.passOver(ctx, next, end, route); err != nil {
				return read, err
			}
		}
		if m == nil {
			return read, nil
		}
		route(m)
		next = m.Sequence + 1
	}
}

// passOver asks the stream's leader for the records from from to to,
// which a reading went past: it routes those the leader has (a replica
// that answered a batch lacked them), and passes over the others, gone.
// One get per record found, and one for the gone sequences before it.
func (n *Node) passOver(ctx context.Context, from, to uint64, route func(*jetstream.RawStreamMsg)) error {
	acks := n.dur.acks
	for from <= to {
		m, err := n.getNext(ctx, n.msgStream(), durablePrefix+">", from, to)
		acks.gapGets.Add(1)
		if err != nil {
			return err
		}
		if m == nil {
			acks.gone(from, to)
			return nil
		}
		if m.Sequence > from {
			acks.gone(from, m.Sequence-1)
		}
		route(m)
		from = m.Sequence + 1
	}
	return nil
}

// fetchedRecord is a record of the durable stream read by its sequence
// (fillGap), not delivered by the consumer: it cannot be acknowledged,
// and a failed routing waits for the consumer's delivery again.
type fetchedRecord struct {
	raw *jetstream.RawStreamMsg
}

var _ jetstream.Msg = (*fetchedRecord)(nil)

func (f *fetchedRecord) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: f.raw.Sequence}, Stream: streamMsgs}, nil
}
func (f *fetchedRecord) Data() []byte                           { return f.raw.Data }
func (f *fetchedRecord) Headers() nats.Header                   { return f.raw.Header }
func (f *fetchedRecord) Subject() string                        { return f.raw.Subject }
func (f *fetchedRecord) Reply() string                          { return "" }
func (f *fetchedRecord) Ack() error                             { return nil }
func (f *fetchedRecord) DoubleAck(context.Context) error        { return nil }
func (f *fetchedRecord) Nak() error                             { return nil }
func (f *fetchedRecord) NakWithDelay(delay time.Duration) error { return nil }
func (f *fetchedRecord) InProgress() error                      { return nil }
func (f *fetchedRecord) Term() error                            { return nil }
func (f *fetchedRecord) TermWithReason(reason string) error     { return nil }

// ackable tells whether an acknowledgement of m reaches the consumer.
func ackable(m jetstream.Msg) bool {
	_, fetched := m.(*fetchedRecord)
	return m != nil && !fetched
}
