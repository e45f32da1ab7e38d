package cluster

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// writeRetainedLate writes a late retained change of this node: one made
// while the bucket was unreachable (a lost quorum, a partition), or kept
// on disk by a run that stopped before it could write it (restoreSpilled).
// Meanwhile other nodes may have changed the topic: the change is written
// only if the bucket's last record of the topic is not newer than it
// (its write time after the change's creation), conditional on that
// record's revision; a newer record stays, and the local store takes it
// (the watch's delivery of it was held back while the change waited).
// This node's own records of the topic, of any run, are older than the
// change waiting. A change that expired while it waited clears the
// topic's older value instead, so that no node serves it again. Clocks of different nodes decide, so nodes whose clocks
// differ by more than the time between two changes of a topic may keep
// the earlier one: the same trade every last-writer-wins store makes.
func (n *Node) writeRetainedLate(ctx context.Context, kv *kvState, w kvWrite) error {
	topic := w.retained.Topic
	subj := "$KV." + bucketRetained + "." + topicTokens(topic)
	for range 4 {
		// From the leader: a direct get may be answered by a copy that
		// lags, and its record would be taken for the bucket's last.
		last, err := n.leaderLast(ctx, "KV_"+bucketRetained, subj)
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return err
		default:
			if n.retainedNewer(last, w.retained) {
				n.keepBucketRetained(topic, last)
				return nil
			}
			rev = last.Sequence
		}
		cw := w
		if exp := w.retained.Expires; !exp.IsZero() && !exp.After(time.Now()) {
			// Expired while it waited: the topic has no retained
			// message, and an older value of the bucket must not
			// come back in its place.
			if rev == 0 || last.Header.Get("KV-Operation") != "" {
				return nil
			}
			cw.retained = &broker.Message{Topic: topic, Retain: true, Created: w.retained.Created}
		}
		err = n.putRetained(ctx, kv, cw, rev, true)
		if err != nil && (isWrongLast(err) || inProcess(err) || errors.Is(err, jetstream.ErrKeyExists)) {
			continue // written meanwhile: read it again
		}
		return err
	}
	// Other nodes kept writing the topic between the read and the
	// write: the change stays queued and is tried again with the
	// others.
	return errLateConflict
}

// errLateConflict is a late retained change whose conditional writes
// kept conflicting; unreachable counts it so that it is tried again.
var errLateConflict = errors.New("cluster: the topic's record kept changing while a late retained change was written")

// retainedNewer reports whether the bucket's record last is newer than
// the change m of this node: another node's value or clear, written after
// m was created. A value this node wrote (in any run: its origin names
// this node), or a clear of this run, came before m.
func (n *Node) retainedNewer(last *jetstream.RawStreamMsg, m *broker.Message) bool {
	switch last.Header.Get("KV-Operation") {
	case "":
		if r, err := decodeRetained(last.Data, time.Now()); err == nil {
			if i := strings.LastIndexByte(r.origin, '/'); i >= 0 && r.origin[:i] == n.cfg.Node {
				return false
			}
		}
	default:
		n.hk.mu.Lock()
		_, own := n.hk.ownPurges[last.Sequence]
		n.hk.mu.Unlock()
		if own {
			return false
		}
	}
	return last.Time.After(m.Created)
}

// keepBucketRetained applies the bucket's record last of topic to the
// local store, in place of a late change of this node that it is newer
// than.
func (n *Node) keepBucketRetained(topic string, last *jetstream.RawStreamMsg) {
	n.log.Info("cluster: a retained change made while the cluster was unreachable is older than the cluster's; the cluster's is kept",
		"topic", topic)
	if last.Header.Get("KV-Operation") != "" {
		n.stats.retainedIn.Add(1)
		n.b.RetainRemote(&broker.Message{Topic: topic, Retain: true}, nil)
		return
	}
	r, err := decodeRetained(last.Data, time.Now())
	if err != nil || r.msg.Topic != topic {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed retained record ignored", "topic", topic, "err", err)
		return
	}
	recordCreated(r.msg, last.Time)
	n.stats.retainedIn.Add(1)
	n.b.RetainRemote(r.msg, r.pub)
}
