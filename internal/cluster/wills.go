package cluster

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// Wills of connections whose node dies (docs/cluster.md, "Wills of a
// node that dies"). The broker hands the cluster the will of every
// connection it accepts with one (broker.LiveWillCluster), and tells it
// when the connection ends whether the will was published, discarded or
// waits for its delay: its single-node rules decide that. So a node that
// crashes leaves the wills of its open connections in moat_sessions,
// where the survivors find them:
//
//	moat.s.<client>.w          a persistent session's will: pending (its
//	                           connection ended) or live (still open)
//	moat.s.<client>.w.<run>    the live will of a clean session's
//	                           connection on the node run <run>
//
// A persistent session's live will lives with the session's records
// and moves with them: whichever node takes the session (a claim, an
// adoption after cluster.adopt_after, the node's own restart) imports it
// as a pending will whose delay ran from the moment the dead node was
// last heard from; it fires there, once, unless the client resumes the
// session first, as on one node. A clean session's will has no session
// to go with: the session ended with the connection, so the will is due
// at once. A survivor adopting the dead node removes each such record
// with a compare-and-set (only one node's succeeds) and publishes the
// will; the node's own next run does the same for what is left.

// willBroker is what the wills of dead nodes' clean sessions need of the
// broker: *broker.Server.
type willBroker interface {
	PublishWill(w *broker.StoredWill)
}

var _ willBroker = (*broker.Server)(nil)
var _ broker.LiveWillCluster = (*Node)(nil)

// LiveWills implements broker.LiveWillCluster: the wills of open
// connections are kept once the broker commits to the cluster.
func (n *Node) LiveWills() bool { return n.persistence() != nil }

// cleanWillSubject is the subject of the live will of a clean session's
// connection to the node run origin.
func cleanWillSubject(id, origin string) string {
	return sessSubject(id, "w."+keyOf(origin))
}

// cleanWillChange writes or removes the live will of a clean session's
// connection (the broker's ChangePutWill or ChangeDeleteWill with
// Will.Clean); it reports whether ch was one. While the session store
// is not in use (no quorum since the node started) nothing is written:
// the connection is accepted as before, and its will is lost if the node
// dies with it.
func (p *persistence) cleanWillChange(c *commit, ch *broker.Change) bool {
	if ch.Will == nil || !ch.Will.Clean || ch.Kind != broker.ChangePutWill && ch.Kind != broker.ChangeDeleteWill {
		return false
	}
	n := p.n
	subj := cleanWillSubject(ch.Will.ClientID, n.origin)
	if len(subj) > maxSubject {
		return true // too long a client ID for a subject: not kept
	}
	select {
	case <-n.sess.ready:
	default:
		return true
	}
	if ch.Kind == broker.ChangeDeleteWill {
		p.publish(c, n.tombstone(subj))
		return true
	}
	data, err := encodeWillOf(ch.Will, n.cfg.Node, n.origin)
	if err != nil {
		c.fail(err)
		return true
	}
	p.publish(c, n.record(subj, data))
	return true
}

// willDelayLeft is what remains of a live will's delay when the node
// named node, which held its connection, is gone: the delay runs from
// when it was last heard from. For this node's previous run, or a node
// never heard from, it runs from now.
func (n *Node) willDelayLeft(node string, delay time.Duration) time.Duration {
	if node == n.cfg.Node {
		return delay
	}
	pb, ok := n.beats.snapshot()[node]
	if !ok || pb.seen.IsZero() {
		return delay
	}
	return max(0, delay-n.now().Sub(pb.seen))
}

// adoptCleanWills publishes the live wills of clean sessions whose
// connections were on the node named name (a node gone, or this node's
// previous run): each record is removed with a compare-and-set first, so
// that of several nodes doing this at once exactly one publishes it. It
// returns how many it published.
func (n *Node) adoptCleanWills(ctx context.Context, name string) (int, error) {
	b, ok := n.b.(willBroker)
	if !ok {
		return 0, nil
	}
	records, err := n.listRecords(ctx, sessPrefix+"*.w.*")
	if err != nil {
		return 0, err
	}
	count := 0
	for _, r := range records {
		if len(r.data) == 0 {
			continue
		}
		id, suffix, err := clientOfSubject(r.subject)
		if err != nil || !strings.HasPrefix(suffix, "w.") {
			continue
		}
		w, wr, err := decodeWillRecord(r.data, id)
		if err != nil {
			n.stats.decodeErrors.Add(1)
			n.log.Warn("cluster: malformed will record ignored", "client", clip(id), "err", err)
			continue
		}
		if !wr.Live || wr.Node != name || wr.Home == n.origin {
			continue
		}
		if err := n.removeRecord(ctx, r.subject, r.seq); errors.Is(err, errConflict) {
			continue // another node took it, or its connection ended
		} else if err != nil {
			return count, err
		}
		// Removed first: a node that dies in the instant before it
		// publishes loses the will; publishing first would let two
		// nodes publish it.
		b.PublishWill(w)
		count++
	}
	if count > 0 {
		n.adopt.wills.Add(uint64(count))
		n.log.Info("cluster: wills of a node gone's connections published", "node", name, "wills", count)
	}
	return count, nil
}

// removeRecord empties the record subj if its last sequence is still
// expect; errConflict otherwise.
func (n *Node) removeRecord(ctx context.Context, subj string, expect uint64) error {
	_, err := n.sess.js.PublishMsg(ctx, n.tombstone(subj), jetstream.WithExpectLastSequencePerSubject(expect))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return errConflict
	}
	return err
}
