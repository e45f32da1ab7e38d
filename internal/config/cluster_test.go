package config

import (
	"strings"
	"testing"
	"time"
)

// clusterBase is a configuration whose cluster section the tests below
// extend (the section's closing brace is theirs to add).
const clusterBase = "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\ncluster: {name: c, node: n1, listen: \"127.0.0.1:7422\", peers: [\"127.0.0.1:7423\"]"

// parseCluster parses clusterBase with value added to its cluster
// section, reports a result other than wantErr ("": none), and returns
// the configuration when it parsed as wanted.
func parseCluster(t *testing.T, value, wantErr string) *Config {
	t.Helper()
	c, err := Parse("moat.yaml", []byte(clusterBase+value+"}\n"))
	switch {
	case wantErr == "" && err != nil:
		t.Errorf("%q: %v", value, err)
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Errorf("%q: error %v, want %q", value, err, wantErr)
	case err == nil:
		return c
	}
	return nil
}

func TestClusterAccessFiles(t *testing.T) {
	for _, tc := range []struct{ value, err string }{
		{"", ""},
		{", access_files: shared", ""},
		{", access_files: local", ""},
		{", access_files: everywhere", `cluster.access_files "everywhere": want shared or local`},
	} {
		if c := parseCluster(t, tc.value, tc.err); c != nil && tc.value == ", access_files: local" && c.Cluster.AccessFiles != "local" {
			t.Errorf("access_files not kept: %+v", c.Cluster)
		}
	}
}

func TestClusterAdoptAfter(t *testing.T) {
	for _, tc := range []struct {
		value, err string
		want       time.Duration
	}{
		{"", "", 0},
		{", adopt_after: 90s", "", 90 * time.Second},
		{", adopt_after: 1d", "", 24 * time.Hour},
		{", adopt_after: 5s", "cluster.adopt_after 5s: at least 10s", 0},
		{", adopt_after: -1m", `invalid duration "-1m"`, 0},
		{", adopt_after: soon", `invalid duration "soon"`, 0},
	} {
		if c := parseCluster(t, tc.value, tc.err); c != nil && time.Duration(c.Cluster.AdoptAfter) != tc.want {
			t.Errorf("%q: adopt_after %v, want %v", tc.value, time.Duration(c.Cluster.AdoptAfter), tc.want)
		}
	}
}

// TestClusterCatchUpBounds: cluster.catch_up_idle and catch_up_max are
// kept within their bounds; unset, the node's defaults apply.
func TestClusterCatchUpBounds(t *testing.T) {
	for _, tc := range []struct {
		value, err string
		idle, max  time.Duration
	}{
		{"", "", 0, 0},
		{", catch_up_idle: 2m, catch_up_max: 1h", "", 2 * time.Minute, time.Hour},
		{", catch_up_idle: 1s, catch_up_max: 10s", "", time.Second, 10 * time.Second},
		{", catch_up_max: 1d", "", 0, 24 * time.Hour},
		{", catch_up_idle: 500ms", "cluster.catch_up_idle 500ms: from 1s to 1h0m0s", 0, 0},
		{", catch_up_idle: 2h", "cluster.catch_up_idle 2h0m0s: from 1s to 1h0m0s", 0, 0},
		{", catch_up_max: 5s", "cluster.catch_up_max 5s: from 10s to 24h0m0s", 0, 0},
		{", catch_up_max: 2d", "cluster.catch_up_max 48h0m0s: from 10s to 24h0m0s", 0, 0},
		{", catch_up_idle: -1m", `invalid duration "-1m"`, 0, 0},
	} {
		if c := parseCluster(t, tc.value, tc.err); c != nil && (time.Duration(c.Cluster.CatchUpIdle) != tc.idle || time.Duration(c.Cluster.CatchUpMax) != tc.max) {
			t.Errorf("%q: catch_up_idle %v, catch_up_max %v; want %v, %v", tc.value,
				time.Duration(c.Cluster.CatchUpIdle), time.Duration(c.Cluster.CatchUpMax), tc.idle, tc.max)
		}
	}
}

// TestClusterListenerNames checks the default listener names of a
// cluster node: by transport, not by port, so that nodes on one host with
// different ports name their listeners alike (an anonymous session
// belongs to its listener's name); a single node keeps transport-port.
func TestClusterListenerNames(t *testing.T) {
	const listeners = "listeners:\n" +
		"  - {address: \"127.0.0.1:18832\", transport: tcp}\n" +
		"  - {address: \"127.0.0.1:18842\", transport: tcp}\n" +
		"  - {name: edge, address: \"127.0.0.1:18852\", transport: tcp}\n"
	for _, tc := range []struct {
		cluster string
		want    []string
	}{
		{"", []string{"tcp-18832", "tcp-18842", "edge"}},
		{"cluster: {name: c, node: n2, listen: \"127.0.0.1:7422\", peers: [\"127.0.0.1:7423\"]}\n", []string{"tcp", "tcp-2", "edge"}},
	} {
		c, err := Parse("moat.yaml", []byte(listeners+tc.cluster))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range c.Listeners {
			got = append(got, l.Name)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("cluster %q: names %v, want %v", tc.cluster, got, tc.want)
		}
	}
}

// TestClusterNeedsAPeer checks that an embedded cluster without another
// node's route address is refused when the configuration is read: the
// embedded JetStream would not start without a route.
func TestClusterNeedsAPeer(t *testing.T) {
	const base = "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\ncluster: {name: c, node: n1, listen: \"127.0.0.1:7422\""
	for _, tc := range []struct{ value, err string }{
		{"", "cluster.peers: list the route address (host:port) of at least one other node"},
		{", peers: [\"127.0.0.1:7422\"]", "cluster.peers: list the route address"},
		{", peers: [\"127.0.0.1:7422\", \"127.0.0.1:7423\"]", ""},
	} {
		_, err := Parse("moat.yaml", []byte(base+tc.value+"}\n"))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.value, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.value, err, tc.err)
		}
	}
}
