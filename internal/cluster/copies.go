package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The number of copies of Moat's streams (docs/cluster.md, "Removing a
// node"). A node asks for min(nodes, 3) copies, nodes counted from its
// cluster.peers; the streams take that number when the node creates or
// updates them at start. Two things change it afterwards:
//
//   - Removing a node from a cluster of three leaves two servers for
//     streams of three copies: each would report two of three copies
//     for as long as the cluster stays that size. The removal lowers
//     every Moat stream to the number of servers left (shrinkCopies).
//   - A node started afterwards whose cluster.peers still names the
//     removed node asks for three copies again, which JetStream refuses
//     for want of servers (its "no suitable peers" answer). The node
//     then keeps the stream's present number of copies and says why
//     (createOrUpdateStream, the buckets' bucket), rather than failing
//     to start. A node added later under a full peers list raises them
//     again.
//
// A node asks for its number at start again, once its sessions are in
// use (raiseCopies): then for every Moat stream, the bucket of removed
// nodes too, which the first removal makes with the copies the servers
// left allow.

// jsErrNoPeers is JetStream's error code for a placement it has too few
// servers for (JSClusterNoPeersErr).
const jsErrNoPeers = 10005

// noPeers tells whether err is JetStream's refusal of more copies than
// it has servers for.
func noPeers(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrNoPeers
}

// presentCopies returns the number of copies the existing stream name
// has; ok is false when it does not exist or cannot be read.
func presentCopies(ctx context.Context, js jetstream.JetStream, name string) (int, bool) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, false
	}
	si, err := s.Info(ctx)
	if err != nil {
		return 0, false
	}
	return si.Config.Replicas, true
}

// fewerCopies decides what a refused creation or update of stream name
// with want copies falls back to: the stream's present number when it
// exists with fewer (the cluster shrank since this node's peers list
// was written). ok is false when the refusal stands.
func (n *Node) fewerCopies(ctx context.Context, js jetstream.JetStream, name string, want int, err error) (int, bool) {
	if !noPeers(err) {
		return 0, false
	}
	have, ok := presentCopies(ctx, js, name)
	if !ok || have >= want {
		return 0, false
	}
	n.warnFewerCopies(name, have, want)
	return have, true
}

// warnFewerCopies logs, once per stream, number of copies and number
// asked in this run, that a stream keeps fewer copies than this node's
// peers list asks for. A node starting is refused more copies both when
// it creates the stream and when it raises it afterwards: one warning
// tells the operator all there is.
func (n *Node) warnFewerCopies(name string, have, asked int) {
	key := fmt.Sprintf("%s/%d/%d", name, have, asked)
	if _, seen := n.copiesWarned.LoadOrStore(key, struct{}{}); seen {
		return
	}
	n.log.Warn("cluster: a stream keeps fewer copies than this node's cluster.peers asks for: the cluster has fewer "+
		"servers (was a node removed? then remove it from cluster.peers)", "stream", name, "copies", have, "asked", asked)
}

// createOrUpdateStream creates or updates the stream of cfg, keeping the
// stream's present, smaller number of copies when JetStream has too few
// servers for cfg's.
func (n *Node) createOrUpdateStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := js.CreateOrUpdateStream(ctx, cfg)
	if err == nil {
		return st, nil
	}
	if have, ok := n.fewerCopies(ctx, js, cfg.Name, cfg.Replicas, err); ok {
		cfg.Replicas = have
		return js.CreateOrUpdateStream(ctx, cfg)
	}
	return nil, err
}

// shrinkCopies lowers every Moat stream with more than servers copies to
// servers, after a node was removed; it returns the streams changed.
// Each change is tried until it succeeds or ctx ends: right after a
// removal the streams that had their leader on the node gone may still
// be electing one.
func (n *Node) shrinkCopies(ctx context.Context, servers int) ([]string, error) {
	if servers < 1 || n.srv == nil {
		return nil, nil
	}
	js, err := jetstream.New(n.nc)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	streams, err := listStreams(lctx, js)
	cancel()
	if err != nil && len(streams) == 0 {
		return nil, fmt.Errorf("cluster: listing the streams: %w", err)
	}
	var changed []string
	var errs []error
	for _, s := range streams {
		if s.Replicas <= servers && s.Replicas != 0 {
			continue
		}
		for {
			done, err := n.shrinkStream(ctx, js, s.Name, servers)
			if err == nil {
				if done {
					changed = append(changed, s.Name)
				}
				break
			}
			if ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("stream %s: %w", s.Name, err))
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	slices.Sort(changed)
	return changed, errors.Join(errs...)
}

// shrinkStream sets stream name's copies to servers if it has more; it
// reports whether it changed the stream.
func (n *Node) shrinkStream(ctx context.Context, js jetstream.JetStream, name string, servers int) (bool, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(sctx, name)
	if err != nil {
		return false, err
	}
	si, err := s.Info(sctx)
	if err != nil {
		return false, err
	}
	if si.Config.Replicas <= servers {
		return false, nil
	}
	cfg := si.Config
	cfg.Replicas = servers
	if _, err := js.UpdateStream(sctx, cfg); err != nil {
		return false, err
	}
	n.log.Info("cluster: stream copies lowered to the servers left", "stream", name, "copies", servers, "were", si.Config.Replicas)
	return true, nil
}

// raiseCopies raises every Moat stream with fewer copies than this
// node's number to it, once the node's sessions are in use. A node
// starting asks for its number when it creates or updates each stream,
// but may ask before JetStream counts it among the servers (right after
// it joined the meta group): refused for want of servers then, it kept
// the stream's present number, and asks again here. The bucket of
// removed nodes, made by the first removal with the copies the servers
// left allowed and by no node starting, is raised here too. A refusal
// for want of servers keeps the present number (a node whose peers list
// names more servers than there are: logged). It reports whether it is
// done (false: the cluster did not answer; ask again).
func (n *Node) raiseCopies() bool {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return true
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*n.setupTimeout())
	defer cancel()
	streams, err := listStreams(ctx, js)
	if err != nil {
		return false
	}
	done := true
	for _, s := range streams {
		if s.Replicas >= n.replicas {
			continue
		}
		if err := n.raiseStream(ctx, js, s.Name); err != nil {
			n.log.Debug("cluster: stream copies not raised", "stream", s.Name, "err", err)
			done = false
		}
	}
	return done
}

// raiseStream sets stream name's copies to this node's number if it has
// fewer; JetStream's refusal for want of servers keeps them (logged).
func (n *Node) raiseStream(ctx context.Context, js jetstream.JetStream, name string) error {
	sctx, cancel := context.WithTimeout(ctx, n.setupTimeout())
	defer cancel()
	st, err := js.Stream(sctx, name)
	if err != nil {
		return err
	}
	cfg := st.CachedInfo().Config
	was := cfg.Replicas
	if was >= n.replicas {
		return nil
	}
	cfg.Replicas = n.replicas
	if _, err := js.UpdateStream(sctx, cfg); err != nil {
		if noPeers(err) {
			n.warnFewerCopies(name, was, n.replicas)
			return nil
		}
		return err
	}
	n.log.Info("cluster: stream copies raised to this node's number", "stream", name, "copies", n.replicas, "were", was)
	return nil
}
