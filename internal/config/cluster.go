package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Cluster joins this broker with others into one (docs/cluster.md). YAML
// only: mosquitto.conf has no cluster. The zero value is off; nothing of
// the cluster runs or costs anything then.
type Cluster struct {
	// Name is the cluster's name, the same on every node. Required.
	Name string `json:"name,omitempty" yaml:"name"`
	// Node is this node's name, unique in the cluster. Required.
	Node string `json:"node,omitempty" yaml:"node"`
	// Listen is the host:port the embedded NATS server accepts routes
	// from the other nodes on. Required unless NATSURL is set.
	Listen string `json:"listen,omitempty" yaml:"listen"`
	// Peers are the route addresses (host:port) of the other nodes.
	Peers []string `json:"peers,omitempty" yaml:"peers"`
	// TLS secures the routes with mutual TLS. Unset: the node's
	// certificate DataDir/cluster/node.pem and .key, verified against the
	// built-in CA DataDir/ca/ca.pem, which every node must share
	// (docs/cluster.md). Routes whose every address is loopback may stay
	// plain when no node certificate exists (one host, for trying it out;
	// warned about).
	TLS ClusterTLS `json:"tls,omitzero" yaml:"tls"`
	// NATSURL, when set, uses an external NATS cluster instead of the
	// embedded server; Credentials is its NATS credentials file (never a
	// secret on the command line).
	NATSURL     string `json:"nats_url,omitempty" yaml:"nats_url"`
	Credentials string `json:"credentials,omitempty" yaml:"credentials"`
	// AccessFiles says whether the password and access policy files are
	// cluster state: "shared" (the default, "" too) sends a change made
	// on one node to the others, which apply it (matched by file name);
	// "local" leaves each node its own files (distribute them yourself).
	AccessFiles string `json:"access_files,omitempty" yaml:"access_files"`
	// AdoptAfter is how long another node must have been down (or
	// stopped) before a surviving node adopts its persistent sessions:
	// their delayed wills fire and their expiry runs without waiting for
	// their clients or the node. 0 (unset): 60 s. At least 10 s, so that
	// a node restarting keeps its sessions.
	AdoptAfter Duration `json:"adopt_after,omitempty" yaml:"adopt_after"`
	// CatchUpIdle is how long a session's catch-up from the cluster's
	// stream (a moved session with more messages than its queue takes, or
	// a connected one that fell behind) waits while its client takes
	// nothing before it gives up, leaving out the rest; CatchUpMax how
	// long one runs at most (the new node's publishers of messages for a
	// moved session wait for it). 0 (unset): 30 s and 10 minutes.
	CatchUpIdle Duration `json:"catch_up_idle,omitempty" yaml:"catch_up_idle"`
	CatchUpMax  Duration `json:"catch_up_max,omitempty" yaml:"catch_up_max"`
}

// The bounds of cluster.catch_up_idle and catch_up_max. Under a second
// a client's round trip under load would end catch-ups; over an hour
// (idle) a client gone would hold a catch-up's memory and its node's
// publishers that long. A catch-up reads the stream, which keeps
// messages 24 hours.
const (
	minCatchUpIdle = time.Second
	maxCatchUpIdle = time.Hour
	minCatchUpMax  = 10 * time.Second
	maxCatchUpMax  = 24 * time.Hour
)

// minAdoptAfter is the least cluster.adopt_after: a node is reported
// down after 6 s without heartbeats, and a restart takes seconds.
const minAdoptAfter = 10 * time.Second

// ClusterTLS names the files of the routes' mutual TLS.
type ClusterTLS struct {
	// Cert and Key are this node's certificate chain and key; the
	// certificate must allow server and client authentication and name
	// the host the other nodes dial.
	Cert string `json:"cert,omitempty" yaml:"cert"`
	Key  string `json:"key,omitempty" yaml:"key"`
	// CA is the bundle that verifies the other nodes' certificates.
	CA string `json:"ca,omitempty" yaml:"ca"`
}

// Enabled tells whether the cluster section is set.
func (c *Cluster) Enabled() bool {
	return c.Name != "" || c.Node != "" || c.Listen != "" || len(c.Peers) > 0 || c.NATSURL != "" ||
		c.TLS != (ClusterTLS{})
}

// AllLoopback tells whether the route address and every peer are
// loopback addresses (or "localhost").
func (c *Cluster) AllLoopback() bool {
	for _, a := range append([]string{c.Listen}, c.Peers...) {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return false
		}
		if host == "localhost" {
			continue
		}
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// validateCluster checks the cluster section; bad reports a problem at
// the setting the message starts with.
func (c *Config) validateCluster(bad func(format string, args ...any)) {
	cl := &c.Cluster
	if !cl.Enabled() {
		return
	}
	if cl.Name == "" {
		bad("cluster.name: required (the same on every node)")
	} else if !validNATSName(cl.Name) {
		bad("cluster.name %q: use letters, digits, '-' and '_' only", cl.Name)
	}
	if cl.AccessFiles != "" && cl.AccessFiles != "shared" && cl.AccessFiles != "local" {
		bad("cluster.access_files %q: want shared or local", cl.AccessFiles)
	}
	if a := time.Duration(cl.AdoptAfter); a != 0 && a < minAdoptAfter {
		bad("cluster.adopt_after %v: at least %v (a node restarting must keep its sessions)", a, minAdoptAfter)
	}
	if d := time.Duration(cl.CatchUpIdle); d != 0 && (d < minCatchUpIdle || d > maxCatchUpIdle) {
		bad("cluster.catch_up_idle %v: from %v to %v", d, minCatchUpIdle, maxCatchUpIdle)
	}
	if d := time.Duration(cl.CatchUpMax); d != 0 && (d < minCatchUpMax || d > maxCatchUpMax) {
		bad("cluster.catch_up_max %v: from %v to %v", d, minCatchUpMax, maxCatchUpMax)
	}
	if cl.Node == "" {
		bad("cluster.node: required (unique in the cluster)")
	} else if !validNATSName(cl.Node) {
		bad("cluster.node %q: use letters, digits, '-' and '_' only", cl.Node)
	}
	hostPort := func(key, a string) {
		_, port, err := net.SplitHostPort(a)
		if err != nil {
			bad("%s %q is not host:port (e.g. \"10.0.0.1:7422\")", key, a)
			return
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			bad("%s %q: port must be a number from 0 to 65535", key, a)
		}
	}
	if cl.NATSURL != "" {
		if cl.Listen != "" || len(cl.Peers) > 0 {
			bad("cluster.nats_url: set either nats_url (an external NATS cluster) or listen and peers (embedded), not both")
		}
		if strings.Contains(cl.NATSURL, "@") {
			bad("cluster.nats_url: put credentials in cluster.credentials (a file), not in the URL")
		}
		return
	}
	if cl.Credentials != "" {
		bad("cluster.credentials: only used with cluster.nats_url")
	}
	if cl.Listen == "" {
		bad("cluster.listen: required (the host:port other nodes connect to), or set cluster.nats_url")
	} else {
		hostPort("cluster.listen", cl.Listen)
	}
	others := 0
	for i, p := range cl.Peers {
		hostPort(fmt.Sprintf("cluster.peers[%d]", i), p)
		if p != cl.Listen {
			others++
		}
	}
	// The embedded JetStream cannot form a cluster without a route to
	// another node: it would refuse to start and the broker with it, after
	// its start timeout and with a misleading cause.
	if others == 0 {
		bad("cluster.peers: list the route address (host:port) of at least one other node; a single broker needs no cluster section")
	}
	t := cl.TLS
	if (t.Cert == "") != (t.Key == "") {
		bad("cluster.tls: set both cert and key, or neither (the node certificate in the data directory)")
	}
	if t.CA != "" && t.Cert == "" {
		bad("cluster.tls.ca: set cert and key too")
	}
}

// validNATSName accepts the names NATS allows for servers and clusters
// that are also safe in subjects and logs.
func validNATSName(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}
