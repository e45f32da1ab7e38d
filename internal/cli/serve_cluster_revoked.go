package cli

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/cluster"
)

// Revocations are cluster state (docs/cluster.md, "Security state"). Each
// node puts the revocation lists of its CRL files into the cluster's
// revocation bucket, one per issuer and node, when they gain serials and
// when the node starts; every node reads every list at start-up, when it
// rejoins after a partition and whenever one changes, and then:
//
//   - refuses the certificates the lists revoke in every TLS handshake of
//     its listeners (tlsconf's Revoked hook), once a list's signature
//     checks against the issuing certificate of the client's verified
//     chain: a list that a node could forge, or one of another CA with the
//     same name, revokes nothing;
//   - records them in its copy of the same Moat CA, when it keeps one
//     (revokeHere), so that its own CRL and OCSP answers agree;
//   - disconnects its live clients whose certificate they revoke.
//
// The event a node sends at the same moment stays: it reaches the nodes
// connected now even without a JetStream quorum. Either path applies
// only what the node does not hold yet, so the second one to arrive does
// nothing.

// Bounds of what the other nodes' lists may make this node hold: a list
// is at most cluster.MaxRevocationList bytes (about 100,000 serials); at
// most maxClusterRevocationLists lists (issuers × nodes) and
// maxClusterRevocationBytes bytes of lists are held. A list beyond them
// is refused and logged at Error: the node's own CRLs, and the events
// for its live connections, still apply.
const (
	maxClusterRevocationLists = 256
	maxClusterRevocationBytes = 16 << 20
)

// clusterRevocations holds the revocation lists of the cluster. Safe for
// concurrent use: the handshakes read it, the cluster's goroutine writes
// it.
type clusterRevocations struct {
	mu       sync.RWMutex
	byKey    map[string]*revocationList   // issuer ID, NUL, origin node
	byIssuer map[string][]*revocationList // raw issuer name
	size     int                          // bytes of the lists held
}

// revocationList is one node's latest list of one issuer.
type revocationList struct {
	origin  string
	list    *x509.RevocationList
	revoked map[string]time.Time // serial (hex, lower case) → revocation time

	mu       sync.Mutex
	verified map[[sha256.Size]byte]bool // issuing certificate → the signature checks
}

func newClusterRevocations() *clusterRevocations {
	return &clusterRevocations{byKey: map[string]*revocationList{}, byIssuer: map[string][]*revocationList{}}
}

// revocationIssuerID names an issuer in the cluster's revocation bucket.
func revocationIssuerID(rawIssuer []byte) string {
	sum := sha256.Sum256(rawIssuer)
	return hex.EncodeToString(sum[:16])
}

var errRevocationBound = errors.New("too many revocation lists held")

// set makes list origin's latest list of its issuer, unless the list
// held is newer (a higher CRL number, or a later thisUpdate), and returns
// the serials (hex) that origin's previous list of that issuer did not
// revoke. A list beyond the bounds is refused.
func (r *clusterRevocations) set(origin string, list *x509.RevocationList) ([]string, error) {
	key := revocationIssuerID(list.RawIssuer) + "\x00" + origin
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.byKey[key]
	if old != nil && !newerList(list, old.list) {
		return nil, nil
	}
	size := r.size + len(list.Raw)
	if old != nil {
		size -= len(old.list.Raw)
	}
	if size > maxClusterRevocationBytes || (old == nil && len(r.byKey) >= maxClusterRevocationLists) {
		return nil, fmt.Errorf("%w (%d lists, %d bytes; at most %d lists, %d bytes)", errRevocationBound,
			len(r.byKey), r.size, maxClusterRevocationLists, maxClusterRevocationBytes)
	}
	issuer := string(list.RawIssuer)
	nl := &revocationList{origin: origin, list: list, revoked: make(map[string]time.Time, len(list.RevokedCertificateEntries)),
		verified: map[[sha256.Size]byte]bool{}}
	var added []string
	for _, e := range list.RevokedCertificateEntries {
		s := e.SerialNumber.Text(16)
		nl.revoked[s] = e.RevocationTime
		// New against the same node's previous list only: a list of
		// another node, which may be forged (its signature is checked
		// only against a client's chain), must not hide a genuine one.
		if old == nil {
			added = append(added, s)
		} else if _, had := old.revoked[s]; !had {
			added = append(added, s)
		}
	}
	lists := r.byIssuer[issuer]
	if old != nil {
		for i, l := range lists {
			if l == old {
				lists = append(lists[:i:i], lists[i+1:]...)
				break
			}
		}
	}
	r.byIssuer[issuer] = append(lists, nl)
	r.byKey[key] = nl
	r.size = size
	return added, nil
}

// newerList tells whether a is a later list of its issuer than b.
func newerList(a, b *x509.RevocationList) bool {
	if a.Number != nil && b.Number != nil {
		if c := a.Number.Cmp(b.Number); c != 0 {
			return c > 0
		}
	}
	return a.ThisUpdate.After(b.ThisUpdate)
}

// revoked is the TLS listeners' Revoked hook: cert is revoked when a list
// of the cluster names its serial and that list's signature checks
// against issuer, the certificate that issued cert in the verified chain.
func (r *clusterRevocations) revoked(cert, issuer *x509.Certificate) (string, bool) {
	serial := cert.SerialNumber.Text(16)
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, l := range r.byIssuer[string(issuer.RawSubject)] {
		at, ok := l.revoked[serial]
		if ok && l.signedBy(issuer) {
			return fmt.Sprintf("revoked on node %s (at %s)", l.origin, at.UTC().Format(time.RFC3339)), true
		}
	}
	return "", false
}

// signedBy checks the list's signature against issuer, once per issuer.
func (l *revocationList) signedBy(issuer *x509.Certificate) bool {
	k := sha256.Sum256(issuer.Raw)
	l.mu.Lock()
	defer l.mu.Unlock()
	ok, seen := l.verified[k]
	if !seen {
		ok = l.list.CheckSignatureFrom(issuer) == nil
		if len(l.verified) < 16 {
			l.verified[k] = ok
		}
	}
	return ok
}

// clusterRevocations returns the plan's cluster revocation lists, made on
// first use; nil without a cluster.
func (p *servePlan) clusterRevocations() *clusterRevocations {
	if !p.cfg.Cluster.Enabled() || p.check {
		return nil
	}
	if p.revocations == nil {
		p.revocations = newClusterRevocations()
	}
	return p.revocations
}

// putRevocations puts this node's revocation list of its issuer into the
// cluster.
func (cs *clusterSecurity) putRevocations(path string, list *x509.RevocationList) {
	if len(list.RevokedCertificateEntries) == 0 {
		return
	}
	if err := cs.node.PutRevocations(revocationIssuerID(list.RawIssuer), list.Raw); err != nil {
		cs.log.Error("cluster: revocation list not sent to the cluster; nodes that are down or cut off now will not refuse its certificates "+
			"(the nodes connected now still disconnect them)", "crl", path, "err", err)
	}
}

// Revocations implements cluster.RevocationHandler: another node's latest
// revocation list of an issuer (or this node's, from an earlier run).
func (cs *clusterSecurity) Revocations(origin, issuer string, data []byte) {
	if len(data) > cluster.MaxRevocationList {
		cs.log.Error("cluster: another node's revocation list is larger than the maximum; ignored", "origin_node", origin, "size", len(data))
		return
	}
	list, err := x509.ParseRevocationList(data)
	if err != nil || revocationIssuerID(list.RawIssuer) != issuer {
		cs.log.Warn("cluster: malformed revocation list of another node ignored", "origin_node", origin, "err", err)
		return
	}
	cs.takeRevocations(origin, list, "certificate revoked ("+list.Issuer.String()+")")
}

// takeRevocations applies another node's list: the serials no list of
// its issuer held before are recorded in this node's CA copy and its live
// clients of those certificates disconnected; from now on the listeners
// refuse them.
func (cs *clusterSecurity) takeRevocations(origin string, list *x509.RevocationList, reason string) {
	var added []string
	if cs.revs != nil {
		var err error
		added, err = cs.revs.set(origin, list)
		if err != nil {
			cs.log.Error("cluster: another node's revocation list refused; its certificates are refused here only if this node's own CRL "+
				"or OCSP says so", "origin_node", origin, "issuer", list.Issuer.String(), "err", err)
			// Its live connections are cut all the same.
			for _, e := range list.RevokedCertificateEntries {
				added = append(added, e.SerialNumber.Text(16))
			}
		}
	}
	if len(added) == 0 {
		return
	}
	serials := make(map[string]bool, len(added))
	for _, s := range added {
		serials[s] = true
	}
	if origin != cs.self {
		cs.log.Info("cluster: certificates revoked on another node are refused here", "origin_node", origin,
			"issuer", list.Issuer.String(), "serials", len(added))
	}
	cs.revokeHere(origin, list, serials)
	cs.cutRevoked(origin, list, serials, reason)
}
