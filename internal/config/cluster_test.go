package config

import (
	"strings"
	"testing"
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
