package broker

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// claimCluster is a localCluster that keeps sessions cluster-wide: it
// grants or refuses claims, and notes for each ClaimAttached whether
// the claimed session had its connection by then.
type claimCluster struct {
	localCluster
	mu       sync.Mutex
	srv      *Server
	refuse   bool
	claims   []string
	attached []string
	withConn []bool
}

var (
	_ SessionCluster = (*claimCluster)(nil)
	_ ClaimAttacher  = (*claimCluster)(nil)
)

func (cc *claimCluster) ClaimSession(_ context.Context, claim SessionClaim) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.claims = append(cc.claims, claim.ClientID)
	if cc.refuse {
		return &ClaimRefused{Reason: "test: refused", Unavailable: true}
	}
	return nil
}

func (cc *claimCluster) ClaimAttached(id string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	on := false
	if sess := cc.srv.lookup(id); sess != nil {
		sess.mu.Lock()
		on = sess.conn != nil
		sess.mu.Unlock()
	}
	cc.attached = append(cc.attached, id)
	cc.withConn = append(cc.withConn, on)
}

func (cc *claimCluster) seen() (claims, attached []string, withConn []bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return slices.Clone(cc.claims), slices.Clone(cc.attached), slices.Clone(cc.withConn)
}

// TestClaimAttachedAfterAttach: the broker tells a ClaimAttacher once
// per successful claim of a persistent session, after the client is
// attached to it (a cluster answers other nodes' requests for the
// session "busy" until then); not for a session that ends with its
// connection, nor for a refused claim.
func TestClaimAttachedAfterAttach(t *testing.T) {
	cc := &claimCluster{}
	srv, addr := testServer(t, Config{Cluster: cc})
	cc.mu.Lock()
	cc.srv = srv
	cc.mu.Unlock()

	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(connectV5("keep", false, withExpiry(60))); ack.ReasonCode != packet.Success {
		t.Fatalf("CONNACK %+v", ack)
	}
	c = dialRaw(t, addr, packet.V5)
	if ack := c.connect(connectV5("clean", true, nil)); ack.ReasonCode != packet.Success {
		t.Fatalf("CONNACK %+v", ack)
	}
	cc.mu.Lock()
	cc.refuse = true
	cc.mu.Unlock()
	c = dialRaw(t, addr, packet.V5)
	if ack := c.connect(connectV5("refused", false, withExpiry(60))); ack.ReasonCode != packet.ServerUnavailable {
		t.Fatalf("CONNACK %+v, want 0x88", ack)
	}
	// Each CONNACK follows the claim and, for "keep", its ClaimAttached.
	claims, attached, withConn := cc.seen()
	if !slices.Equal(claims, []string{"keep", "clean", "refused"}) {
		t.Errorf("claims %v", claims)
	}
	if !slices.Equal(attached, []string{"keep"}) || !withConn[0] {
		t.Errorf("ClaimAttached for %v (session attached then: %v), want keep alone, attached", attached, withConn)
	}
}
