package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// golden is what a golden file records for one input.
type golden struct {
	Config   *Config  `json:"config,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	Error    []string `json:"error,omitempty"`
}

func goldenResult(c *Config, err error) golden {
	if err != nil {
		return golden{Error: strings.Split(err.Error(), "\n")}
	}
	return golden{Config: c, Warnings: c.Warnings()}
}

func checkGolden(t *testing.T, path string, g golden) {
	t.Helper()
	got, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the parse result (run go test -update and review the diff):\n%s", path, got)
	}
}

// TestGolden parses every .conf and .yaml file in testdata/golden (and the
// documented example) and compares the Config, its warnings or its errors
// with the matching .json file.
func TestGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/golden/*.conf")
	yamls, _ := filepath.Glob("testdata/golden/*.yaml")
	inputs = append(inputs, yamls...)
	inputs = append(inputs, "../../examples/moat.yaml")
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			c, err := Load(in)
			var out string
			if strings.HasPrefix(in, "../") {
				out = "testdata/golden/example-moat.yaml.json"
			} else {
				out = in + ".json"
			}
			checkGolden(t, out, goldenResult(c, err))
		})
	}
	t.Run("Default", func(t *testing.T) {
		c := Default()
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, "testdata/golden/default.json", goldenResult(c, nil))
	})
}
