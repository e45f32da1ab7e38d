package config

import (
	"strings"
	"testing"
	"time"
)

func TestClusterAccessFiles(t *testing.T) {
	const base = "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\ncluster: {name: c, node: n1, listen: \"127.0.0.1:7422\""
	for _, tc := range []struct{ value, err string }{
		{"", ""},
		{", access_files: shared", ""},
		{", access_files: local", ""},
		{", access_files: everywhere", `cluster.access_files "everywhere": want shared or local`},
	} {
		c, err := Parse("moat.yaml", []byte(base+tc.value+"}\n"))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.value, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.value, err, tc.err)
		case err == nil && tc.value == ", access_files: local" && c.Cluster.AccessFiles != "local":
			t.Errorf("access_files not kept: %+v", c.Cluster)
		}
	}
}

func TestClusterAdoptAfter(t *testing.T) {
	const base = "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\ncluster: {name: c, node: n1, listen: \"127.0.0.1:7422\""
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
		c, err := Parse("moat.yaml", []byte(base+tc.value+"}\n"))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.value, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.value, err, tc.err)
		case err == nil && time.Duration(c.Cluster.AdoptAfter) != tc.want:
			t.Errorf("%q: adopt_after %v, want %v", tc.value, time.Duration(c.Cluster.AdoptAfter), tc.want)
		}
	}
}
