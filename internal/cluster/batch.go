package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// Group commit of the durable stream (docs/cluster.md, "Durable QoS 1
// and 2"). The QoS 1/2 messages a node accepts while one of its batch
// records is on its way to the stream go together into the next record:
// one JetStream message holding up to maxBatchMsgs messages (or
// maxBatchBytes, whichever comes first), written, replicated and, with
// sync always, fsynced once, and read and acknowledged once by each
// node's consumer. Each message's PUBACK or PUBREC still waits for the
// stream's acknowledgement of the record holding it.
//
// A batch record is published on batchSubject with the usual origin
// header and a message ID of its own (the stream drops a copy published
// again after a lost acknowledgement). Its data is version 1 of this
// format:
//
//	byte       1 (the version)
//	uvarint    count (at least 1)
//	count times:
//	  uvarint  the message's sequence number at its origin (its ID in the
//	           stream is "<origin>/<sequence>", as a single record's was)
//	  varint   the time it was published, Unix nanoseconds (its expiry
//	           counts from there)
//	  uvarint  length, then the publisher's client ID (No Local)
//	  uvarint  length, then the message as an MQTT 5 PUBLISH (wire.go)
//
// Records written by earlier builds hold one message each, on the
// subject moat.d.<topic tokens> with the sequence, time and publisher in
// headers; they are still read (single records).

// batchSubject is the subject of batch records. Topic tokens start with
// '_', so no single record has it.
const batchSubject = durablePrefix + "b"

// batchVersion is the version of the batch format written.
const batchVersion = 1

// Bounds of one batch record: messages, and bytes of their entries (a
// message larger than maxBatchBytes goes alone). The bytes stay under
// the smallest max_payload a NATS server has by default (1 MiB) with
// room for the headers; the embedded server allows 64 MiB.
const (
	maxBatchMsgs  = 256
	maxBatchBytes = 1<<20 - 64<<10
)

// maxBatchesInFlight is how many batch records a node has on their way
// to the stream at once. One means pure group commit: while a record is
// being written everything accepted waits for the next. Two lets a
// second record be written while the first's acknowledgement travels
// back, which keeps the stream's leader busy without splitting the load
// into many small records.
const maxBatchesInFlight = 2

// fwdMsg is one message for the stream, encoded.
type fwdMsg struct {
	topic string
	seq   uint64 // this run's sequence number: its ID is origin/seq
	sent  int64  // Unix nanoseconds at publication
	from  string // the publisher's client ID
	pkt   []byte // the PUBLISH (encodeMessage)
}

// size is the number of bytes of f's entry in a batch, about.
func (f *fwdMsg) size() int { return len(f.pkt) + len(f.from) + 3*binary.MaxVarintLen64 }

// appendBatchEntry appends f's entry to a batch's data.
func appendBatchEntry(b []byte, f *fwdMsg) []byte {
	b = binary.AppendUvarint(b, f.seq)
	b = binary.AppendVarint(b, f.sent)
	b = binary.AppendUvarint(b, uint64(len(f.from)))
	b = append(b, f.from...)
	b = binary.AppendUvarint(b, uint64(len(f.pkt)))
	return append(b, f.pkt...)
}

// encodeBatch returns the data of a batch record of msgs (at least one).
func encodeBatch(msgs []*fwdMsg) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, f := range msgs {
		size += f.size()
	}
	b := make([]byte, 0, size)
	b = append(b, batchVersion)
	b = binary.AppendUvarint(b, uint64(len(msgs)))
	for _, f := range msgs {
		b = appendBatchEntry(b, f)
	}
	return b
}

// batchEntry is one message of a decoded batch record, not yet decoded
// itself.
type batchEntry struct {
	seq  uint64
	sent int64
	from []byte // aliases the record's data
	pkt  []byte // aliases the record's data
}

var errBatch = errors.New("cluster: malformed batch record")

// decodeBatch splits the data of a batch record into its entries. It
// checks the framing only; each entry's PUBLISH is decoded on its own
// (decodeMessage), so that one bad message does not cost the others.
func decodeBatch(b []byte) ([]batchEntry, error) { return decodeBatchInto(nil, b) }

// decodeBatchInto is decodeBatch into dst's storage (a reader of many
// records reuses one slice).
func decodeBatchInto(dst []batchEntry, b []byte) ([]batchEntry, error) {
	if len(b) < 1 {
		return nil, errBatch
	}
	if b[0] != batchVersion {
		return nil, errors.New("cluster: batch record of unknown version " + strconv.Itoa(int(b[0])))
	}
	b = b[1:]
	count, k := binary.Uvarint(b)
	// Every entry takes at least four bytes.
	if k <= 0 || count == 0 || count > uint64(len(b)-k)/4 {
		return nil, errBatch
	}
	b = b[k:]
	field := func() ([]byte, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, false
		}
		f := b[k : k+int(n)]
		b = b[k+int(n):]
		return f, true
	}
	out := dst[:0]
	if cap(out) < int(count) {
		out = make([]batchEntry, 0, count)
	}
	for range count {
		var e batchEntry
		var k int
		if e.seq, k = binary.Uvarint(b); k <= 0 {
			return nil, errBatch
		}
		b = b[k:]
		if e.sent, k = binary.Varint(b); k <= 0 {
			return nil, errBatch
		}
		b = b[k:]
		var ok bool
		if e.from, ok = field(); !ok {
			return nil, errBatch
		}
		if e.pkt, ok = field(); !ok {
			return nil, errBatch
		}
		out = append(out, e)
	}
	if len(b) != 0 {
		return nil, errBatch
	}
	return out, nil
}

// message decodes e's message.
func (e *batchEntry) message() (*broker.Message, error) {
	return decodeMessage(e.pkt, string(e.from), time.Unix(0, e.sent))
}

// msgID is the stream ID of the message origin/seq (the JetStream message
// ID of a single record, the ID of an entry of a batch): what the
// consumers' duplicate check and the sessions' delivery records use.
func msgID(origin string, seq uint64) string { return origin + "/" + strconv.FormatUint(seq, 10) }

// batchRecord returns the stream message holding msgs: the record with
// ID origin/b<sequence of its first message> (each message of a run
// goes into one batch, so no two batches share it).
func batchRecord(origin string, msgs []*fwdMsg) *nats.Msg {
	m := &nats.Msg{Subject: batchSubject, Data: encodeBatch(msgs), Header: nats.Header{}}
	m.Header[hdrOrigin] = []string{origin}
	m.Header[nats.MsgIdHdr] = []string{origin + "/b" + strconv.FormatUint(msgs[0].seq, 10)}
	return m
}

// singleRecord returns the stream message of one message in the format
// of earlier builds: one record per message, on moat.d.<topic tokens>,
// its sequence, time and publisher in headers. It is written while a
// node of the cluster may not read batch records (batchOK).
func singleRecord(origin string, f *fwdMsg) *nats.Msg {
	m := &nats.Msg{Subject: durablePrefix + topicTokens(f.topic), Data: f.pkt, Header: nats.Header{}}
	m.Header[hdrOrigin] = []string{origin}
	m.Header[hdrSeq] = []string{strconv.FormatUint(f.seq, 10)}
	m.Header[hdrSent] = []string{strconv.FormatInt(f.sent, 10)}
	m.Header[nats.MsgIdHdr] = []string{msgID(origin, f.seq)}
	if f.from != "" {
		m.Header[hdrFrom] = []string{f.from}
	}
	return m
}

// Nodes that read batch records say so with one more marker,
// moat.v.<node>.batch1, subscribed before their presence marker (so a
// node seen present without it runs an earlier build). It lies outside
// moat.i.<node>., where a filter's marker could be a wildcard.
const (
	capPrefix = "moat.v."
	capBatch  = ".batch1"
)

// batchOK tells whether every node of the cluster reads batch records:
// each node seen present now has the batch marker, each one away had it
// when last seen, and each one never seen by this run (the cluster is
// missing one since this node started) has a durable consumer that only
// a build reading batches creates (noteUnseen). A node seen without the
// marker (a rolling upgrade from an earlier build), or one never seen
// whose consumer does not tell, makes messages go as single records,
// which every build reads. With an external NATS, whose interest a node
// cannot see, every node is assumed to read batches (docs/cluster.md,
// "Upgrades").
func (n *Node) batchOK() bool {
	if n.srv == nil {
		return true
	}
	d := &n.dur
	peers := *d.peers.Load()
	if len(peers) == 0 {
		// No other node known yet (before the first refresh of the
		// peers, refreshPeers): a cluster has at least three nodes, so
		// nothing tells that the others read batches.
		return false
	}
	d.capMu.Lock()
	defer d.capMu.Unlock()
	n.noteCapabilitiesLocked(peers)
	unseen := max(int(d.expected.Load())-len(peers), 0)
	for _, p := range peers {
		capable, noted := d.capable[p]
		if !noted {
			unseen++
			continue
		}
		if !capable {
			return false
		}
	}
	return unseen == 0 || int64(unseen) <= d.unseen.Load()
}

// noteUnseen notes in dur.unseen how many of the nodes this run never
// saw present read batch records, as their durable consumers on
// moat_msgs tell (0 while every node was seen). A consumer with
// cumulative acknowledgements (AckAll) is created only by builds that
// came after batch records, and is replaced when a build starts; an
// earlier build's consumer (AckExplicit), one missing, or any doubt
// counts none. After a restart during another node's absence, that
// node's name may not be known at all (the JetStream meta group lists
// it under a placeholder), so the consumers are read by what they are
// not: this node's, or a node's seen present by this run. They are
// read from this server's copies when it holds a copy of the stream
// (and so of every consumer: a consumer's copies are on its stream's
// servers); a node without one, in a cluster of more than three nodes,
// asks the JetStream API (unseenConsumersAPI). Before this, a
// node restarted while another was away wrote single records until that
// one came back, one message per record, and after an election of the
// stream sent each again in its turn, one round trip per message.
func (n *Node) noteUnseen() {
	d := &n.dur
	peers := *d.peers.Load()
	d.capMu.Lock()
	unseen := max(int(d.expected.Load())-len(peers), 0)
	seen := map[string]bool{n.consumerName(): true}
	for _, p := range peers {
		if _, noted := d.capable[p]; noted {
			seen["node"+p[len(markerPrefix):len(p)-1]] = true
		} else {
			unseen++
		}
	}
	d.capMu.Unlock()
	if unseen == 0 {
		d.unseen.Store(0)
		return
	}
	d.unseen.Store(int64(n.unseenConsumers(seen)))
}

// unseenConsumers returns the number of durable consumers of moat_msgs
// that are not named in seen, all with AckAll; 0 if any is not (or they
// cannot be read).
func (n *Node) unseenConsumers(seen map[string]bool) int {
	acc := n.srv.GlobalAccount().Name
	ad, err := n.srv.JszAccount(&server.JSzOptions{Account: acc, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return 0
	}
	held := slices.ContainsFunc(ad.Streams, func(sd server.StreamDetail) bool { return sd.Name == streamMsgs })
	if !held {
		return n.unseenConsumersAPI(seen)
	}
	count := 0
	for i := range ad.Streams {
		sd := &ad.Streams[i]
		if sd.Name != streamMsgs {
			continue
		}
		for _, c := range sd.Consumer {
			if c == nil || !strings.HasPrefix(c.Name, "node") || seen[c.Name] {
				continue
			}
			if c.Config == nil || c.Config.AckPolicy != server.AckAll {
				return 0
			}
			count++
		}
	}
	return count
}

// unseenAPIWait bounds unseenConsumersAPI's requests: monitorPeers,
// which calls it every second, also drops lingering markers.
const unseenAPIWait = 2 * time.Second

// unseenConsumersAPI is unseenConsumers for a node without a copy of
// moat_msgs (a cluster of more than three nodes): the names of the
// stream's consumers come from the JetStream API, and the configuration
// of each one not named in seen from its leader. A consumer that does
// not answer in time, or any failure, counts none: the node then writes
// single records, which every build reads.
func (n *Node) unseenConsumersAPI(seen map[string]bool) int {
	// The stream's handle is set before the sessions are ready, by the
	// goroutine that then marks them so.
	if !n.sessionsReady() {
		return 0
	}
	st := n.msgStream()
	if st == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(n.ctx, unseenAPIWait)
	defer cancel()
	lister := st.ConsumerNames(ctx)
	var names []string
	// Read to the end: the lister's goroutine ends only once its
	// channel is drained.
	for name := range lister.Name() {
		if strings.HasPrefix(name, "node") && !seen[name] && len(names) < maxHBNodes {
			names = append(names, name)
		}
	}
	if lister.Err() != nil {
		return 0
	}
	for _, name := range names {
		c, err := st.Consumer(ctx, name)
		if err != nil || c.CachedInfo().Config.AckPolicy != jetstream.AckAllPolicy {
			return 0
		}
	}
	return len(names)
}

// noteCapabilities notes, for every node seen present now, whether it
// has the batch marker, so that batchOK knows it while that node is
// away. monitorPeers calls it every second: a node this one forwarded
// nothing to before it went was otherwise never noted (batchOK notes
// only as it is asked, when a message is forwarded).
func (n *Node) noteCapabilities() {
	if n.srv == nil {
		return
	}
	peers := *n.dur.peers.Load()
	n.dur.capMu.Lock()
	n.noteCapabilitiesLocked(peers)
	n.dur.capMu.Unlock()
}

// noteCapabilitiesLocked notes the batch marker of each of peers seen
// present now; the caller holds capMu.
func (n *Node) noteCapabilitiesLocked(peers []string) {
	acc := n.srv.GlobalAccount()
	for _, p := range peers {
		if acc.Interest(p+presenceToken) > 0 {
			key := p[len(markerPrefix) : len(p)-1]
			n.dur.capable[p] = acc.Interest(capPrefix+key+capBatch) > 0
		}
	}
}
