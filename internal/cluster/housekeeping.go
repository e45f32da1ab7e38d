package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// Housekeeping keeps the key-value buckets from growing with every topic
// ever cleared and every client ID ever connected:
//
//   - A cleared retained topic is purged from moat_retained: a purge
//     marker (KV-Operation: PURGE with a subject rollup) replaces its
//     value, and the marker itself expires after MarkerTTL. Watching
//     nodes see the marker and clear their copy; a node that starts
//     within MarkerTTL sees it in its first read of the bucket.
//   - A client ID's claim in moat_clients is purged the same way when its
//     session ends on the node holding the claim and nothing of it is left
//     there (broker.ClusterSessionEnds): a clean session's disconnection,
//     an expiry, or a clean start that replaced it. The purge names the
//     claim's revision, so a newer claim of another node is never removed.
//   - At start, once the buckets are in use, a node purges the claims its
//     previous run left (a crash does not end sessions) for client IDs
//     with no session here.
//
// The markers need per-message TTLs (NATS 2.11 and later, the embedded
// server included); on an external NATS without them the markers stay,
// one small record per removed key, as deletes did before.

// defaultMarkerTTL is Config.MarkerTTL's default: long enough for a node
// down for maintenance to learn, when it comes back, what was removed.
const defaultMarkerTTL = 24 * time.Hour

func (n *Node) markerTTL() time.Duration {
	if n.cfg.MarkerTTL > 0 {
		return n.cfg.MarkerTTL
	}
	return defaultMarkerTTL
}

// bucket creates or binds a bucket whose removal markers expire
// (LimitMarkerTTL enables per-message TTLs); where the server lacks them,
// it creates the bucket without, and markers then stay.
func (n *Node) bucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := n.bucketOnce(ctx, js, cfg)
	// A cluster shrunk since this node's peers list was written keeps
	// its buckets' present copies (copies.go).
	if have, ok := n.fewerCopies(ctx, js, "KV_"+cfg.Bucket, cfg.Replicas, err); ok {
		cfg.Replicas = have
		return n.bucketOnce(ctx, js, cfg)
	}
	return kv, err
}

func (n *Node) bucketOnce(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if !n.noMarkerTTL.Load() {
		c := cfg
		c.LimitMarkerTTL = n.markerTTL()
		kv, err := js.CreateOrUpdateKeyValue(ctx, c)
		if err == nil || !errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
			return kv, err
		}
		n.noMarkerTTL.Store(true)
		n.log.Warn("cluster: the NATS server has no per-message TTLs (NATS 2.11 or later has): the markers of cleared "+
			"retained messages and forgotten claims stay in the buckets", "bucket", cfg.Bucket)
	}
	return js.CreateOrUpdateKeyValue(ctx, cfg)
}

// purgeMarker publishes a purge marker for key in bucket, as the NATS
// key-value protocol defines it (what KeyValue.Purge sends), with a TTL
// when the bucket allows one, and returns its revision: the watch gives
// no other way to tell this node's markers from others', and a node must
// not apply its own past clear over a value it has set since.
func (n *Node) purgeMarker(ctx context.Context, bucket, key string, lastRev uint64) (uint64, error) {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return 0, err
	}
	m := nats.NewMsg("$KV." + bucket + "." + key)
	m.Header.Set("KV-Operation", "PURGE")
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	var opts []jetstream.PublishOpt
	if lastRev > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(lastRev))
	}
	if !n.noMarkerTTL.Load() {
		opts = append(opts, jetstream.WithMsgTTL(n.markerTTL()))
	}
	ack, err := js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// purgeRetained removes a cleared topic's retained message from the
// bucket.
func (n *Node) purgeRetained(ctx context.Context, kv *kvState, topic string, last uint64) error {
	rev, err := n.purgeMarker(ctx, bucketRetained, topicTokens(topic), last)
	if err != nil {
		if !unreachable(err) && !isWrongLast(err) && !inProcess(err) {
			n.log.Warn("cluster: cleared retained message not removed from the cluster", "topic", topic, "err", err)
		}
		return err
	}
	n.hk.mu.Lock()
	if n.hk.ownPurges == nil || len(n.hk.ownPurges) >= maxOwnPurges {
		// Entries are removed as the watch returns them; a watch that
		// missed some (restarted) must not make the set grow forever.
		n.hk.ownPurges = make(map[uint64]struct{})
	}
	n.hk.ownPurges[rev] = struct{}{}
	n.hk.mu.Unlock()
	n.wroteRetained(topic, rev)
	n.stats.retainedOut.Add(1)
	n.stats.retainedPurged.Add(1)
	return nil
}

// maxOwnPurges bounds the revisions of this node's markers not yet seen
// in the watch.
const maxOwnPurges = 100000

// applyRetainedRemoval applies a removal marker of the retained bucket:
// another node cleared the topic (a purge, or a delete by a tool).
func (n *Node) applyRetainedRemoval(e jetstream.KeyValueEntry, first bool) {
	n.hk.mu.Lock()
	_, own := n.hk.ownPurges[e.Revision()]
	delete(n.hk.ownPurges, e.Revision())
	n.hk.mu.Unlock()
	t, err := tokensTopic(e.Key())
	switch {
	case own:
		if err == nil {
			n.ownRetainedBack(t, e.Revision())
		}
		return
	case err != nil:
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: retained removal under a malformed key ignored", "key", clip(e.Key()))
		return
	case n.retainedBehind(t, e.Revision()):
		return
	case first && n.localRetainedNewer(t, e.Created(), nil):
		return
	}
	n.stats.retainedIn.Add(1)
	n.b.RetainRemote(&broker.Message{Topic: t, Retain: true}, nil)
}

// SessionEnded implements broker.ClusterSessionEnds: the client's claim
// is forgotten in the background, in order with the other writes.
func (n *Node) SessionEnded(clientID string) {
	n.queueWrite(kvWrite{clientID: clientID, prune: true, at: time.Now()})
}

var _ broker.ClusterSessionEnds = (*Node)(nil)

// sessionChecker is what pruning asks the broker (*broker.Server).
type sessionChecker interface {
	HasSession(clientID string) bool
}

// hasSession tells whether the broker holds a session of clientID; true
// when it cannot say, so that nothing is pruned on a guess.
func (n *Node) hasSession(clientID string) bool {
	sc, ok := n.b.(sessionChecker)
	return !ok || sc.HasSession(clientID)
}

// pruneClaim removes this node's claim of clientID when the client has no
// session here (it may have connected again since its session ended).
func (n *Node) pruneClaim(ctx context.Context, kv *kvState, clientID string) {
	kv.mu.Lock()
	rev, ok := kv.claims[clientID]
	kv.mu.Unlock()
	if !ok || n.hasSession(clientID) {
		return // another node claimed it since, or a new session started
	}
	_, err := n.purgeMarker(ctx, bucketClients, keyOf(clientID), rev)
	kv.mu.Lock()
	if kv.claims[clientID] == rev {
		delete(kv.claims, clientID)
	}
	kv.mu.Unlock()
	switch {
	case err == nil:
		n.stats.claimsPruned.Add(1)
	case isWrongLast(err):
		// Another node claimed the client ID since: its claim stays.
	default:
		n.log.Debug("cluster: claim of a finished session not removed", "client", clientID, "err", err)
	}
}

// isWrongLast tells a refused expected-revision write.
func isWrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// sweepClaims purges, once the buckets are in use, the claims that this
// node's previous runs left for client IDs with no session here, and
// returns how many it removed.
func (n *Node) sweepClaims() int {
	select {
	case <-n.ctx.Done():
		return 0
	case <-n.ready:
	}
	found, err := n.claimsOf(n.ctx, n.cfg.Node, n.origin)
	if err != nil {
		n.log.Warn("cluster: claims of this node's previous run not checked", "err", err)
		return 0
	}
	pruned := 0
	for _, s := range found {
		if n.ctx.Err() != nil {
			return pruned
		}
		if n.hasSession(s.id) {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		_, err := n.purgeMarker(ctx, bucketClients, keyOf(s.id), s.rev)
		cancel()
		switch {
		case err == nil:
			pruned++
			n.stats.claimsPruned.Add(1)
		case isWrongLast(err):
			// The client ID was claimed again since it was read.
		default:
			n.log.Info("cluster: claim left by this node's previous run not removed", "client", s.id, "err", err)
		}
	}
	if pruned > 0 {
		n.log.Info("cluster: claims left by this node's previous run removed", "claims", pruned)
	}
	return pruned
}

// heldClaim is a client ID's claim with its revision.
type heldClaim struct {
	id  string
	rev uint64
}

// claimsOf lists the claims held by runs of the node named node other
// than the run except ("" for none). It reads the bucket's stream by
// subject, several gets at once (listSubjects; the bucket keeps one
// record per key), rather than watching the bucket: a watch is a
// consumer, whose creation waits for a JetStream meta leader, elected
// anew when a node dies (the moment the claims of a node gone are looked
// for), and which stalls, unanswered, when the stream's leader changes
// under it. A get that goes unanswered is made again (getNext).
func (n *Node) claimsOf(ctx context.Context, node, except string) ([]heldClaim, error) {
	st, err := n.claimsStream(ctx)
	if err != nil {
		return nil, err
	}
	records, err := n.listSubjects(ctx, st, claimsPrefix+">")
	if err != nil {
		return nil, err
	}
	var found []heldClaim
	prefix := node + "/"
	for _, r := range records {
		var c claimRecord
		if len(r.data) == 0 || json.Unmarshal(r.data, &c) != nil || !strings.HasPrefix(c.Node, prefix) || c.Node == except {
			continue // a removal marker, or another node's claim
		}
		if id, err := keyString(strings.TrimPrefix(r.subject, claimsPrefix)); err == nil {
			found = append(found, heldClaim{id, r.seq})
		}
	}
	return found, nil
}

// claimsPrefix is the subject prefix of the claims bucket's keys in its
// stream.
const claimsPrefix = "$KV." + bucketClients + "."

// claimsStream returns the stream of the claims bucket, looked up once
// the bucket is in use.
func (n *Node) claimsStream(ctx context.Context) (jetstream.Stream, error) {
	kv := n.kvs()
	kv.mu.Lock()
	st, cl := kv.clientsStream, kv.clients
	kv.mu.Unlock()
	if st != nil {
		return st, nil
	}
	if cl == nil {
		return nil, errors.New("cluster: the claims bucket is not in use yet")
	}
	js, err := jetstream.New(n.nc)
	if err != nil {
		return nil, err
	}
	err = n.retryRequest(ctx, func(ctx context.Context) error {
		st, err = js.Stream(ctx, "KV_"+bucketClients)
		return err
	})
	if err != nil {
		return nil, err
	}
	kv.mu.Lock()
	kv.clientsStream = st
	kv.mu.Unlock()
	return st, nil
}

// purgeClaimsOf removes every claim held by the node named node, gone
// from the cluster (its sessions adopted, or the node removed): it
// holds no connection. Each purge names the claim's revision, so a
// client ID claimed again meanwhile keeps its new claim; a purge left
// unanswered is made again (the second finds the first's marker, or a
// newer claim, and changes nothing). It returns how many it removed,
// and an error when the claims could not be read or some could not be
// removed for want of an answer: the caller tries again later.
func (n *Node) purgeClaimsOf(ctx context.Context, node string) (int, error) {
	found, err := n.claimsOf(ctx, node, "")
	if err != nil {
		return 0, fmt.Errorf("cluster: the claims of node %s not read: %w", node, err)
	}
	pruned, failed := 0, 0
	var last error
	for _, s := range found {
		err := n.retryRequest(ctx, func(ctx context.Context) error {
			_, err := n.purgeMarker(ctx, bucketClients, keyOf(s.id), s.rev)
			return err
		})
		switch {
		case err == nil:
			pruned++
			n.stats.claimsPruned.Add(1)
		case isWrongLast(err):
			// Claimed again since, removed by another node, or by this
			// node's own purge whose answer was lost.
		case unreachable(err):
			failed++
			last = err
		default:
			n.log.Info("cluster: claim of a node gone not removed", "node", node, "client", clip(s.id), "err", err)
		}
	}
	if failed > 0 {
		return pruned, fmt.Errorf("cluster: %d claims of node %s not removed: %w", failed, node, last)
	}
	return pruned, nil
}
