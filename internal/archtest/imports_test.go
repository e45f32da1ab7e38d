package archtest

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/moatmq/moat"

// pkgInfo is the part of `go list -json` the rules need.
type pkgInfo struct {
	ImportPath string
	Imports    []string // direct imports of the non-test files
	Deps       []string // every transitive dependency of the non-test files
	Standard   bool
}

// listModule runs `go list -json` over the whole module and returns its
// packages by import path.
func listModule(t *testing.T) map[string]pkgInfo {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("archtest: the go command is needed to read the import graph: %v", err)
	}
	cmd := exec.Command(gobin, "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("archtest: go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	pkgs := map[string]pkgInfo{}
	for {
		var p pkgInfo
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("archtest: decoding go list output: %v", err)
		}
		pkgs[p.ImportPath] = p
	}
	if len(pkgs) < 10 {
		t.Fatalf("archtest: go list found only %d packages; run from the module", len(pkgs))
	}
	return pkgs
}

func short(p string) string { return strings.TrimPrefix(p, module+"/") }

func isModule(p string) bool { return p == module || strings.HasPrefix(p, module+"/") }

// nonStd reports the dependencies of p outside the standard library.
func nonStd(p pkgInfo) []string {
	var bad []string
	for _, d := range p.Deps {
		if strings.Contains(strings.SplitN(d, "/", 2)[0], ".") {
			bad = append(bad, short(d))
		}
	}
	return bad
}

// TestStandardLibraryOnly: the codec and the topic index are the broker's
// foundation and are fuzzed on their own; they take no third-party or
// in-module dependency.
func TestStandardLibraryOnly(t *testing.T) {
	all := listModule(t)
	for _, name := range []string{"internal/packet", "internal/topic"} {
		p, ok := all[module+"/"+name]
		if !ok {
			t.Fatalf("package %s not found", name)
		}
		if bad := nonStd(p); len(bad) > 0 {
			t.Errorf("%s depends on %v; it must use the standard library only", name, bad)
		}
	}
}

// TestBrokerSeams: the broker sees authentication, authorization, storage,
// TLS and the cluster only through interfaces it declares itself, so it
// never depends (even indirectly) on the packages that implement them.
func TestBrokerSeams(t *testing.T) {
	all := listModule(t)
	b, ok := all[module+"/internal/broker"]
	if !ok {
		t.Fatal("internal/broker not found")
	}
	forbidden := []string{"internal/pki", "internal/tlsconf", "internal/config", "internal/cli",
		"internal/listener", "internal/store", "internal/cluster", "internal/admin",
		"internal/authn", "internal/authz", "internal/guard", "internal/audit", "internal/metrics"}
	for _, d := range b.Deps {
		for _, f := range forbidden {
			if d == module+"/"+f || strings.HasPrefix(d, module+"/"+f+"/") {
				t.Errorf("internal/broker depends on %s; reach it through an interface the broker declares, wired in internal/cli", short(d))
			}
		}
	}
}

// allowedImports lists, for every package of the module, the module
// packages it may import directly. Only internal/cli wires subsystems
// together; a new package (or a new edge) is a design decision that must be
// made here, in the open.
var allowedImports = map[string][]string{
	"cmd/moat": {"internal/cli"},
	// The client and the broker share one SCRAM implementation.
	"client":              {"internal/packet", "internal/authn/scram"},
	"e2e":                 {"e2e/internal/format"},
	"e2e/internal/format": {},
	// The key service names members by the broker's own certificate
	// identity rule (one rule everywhere).
	"e2e/keyservice":    {"e2e", "internal/tlsconf"},
	"e2e/ota":           {"e2e", "e2e/internal/format"},
	"internal/archtest": {},
	// The audit log is a leaf: callers hand it events; only internal/cli
	// wires it to the broker, the CA and the admin API.
	// The admin API shows the broker's, the ban list's, the CA's and the
	// audit log's own types and calls their read and change APIs; it
	// wires nothing together (internal/cli hands it each one).
	"internal/admin":            {"internal/audit", "internal/broker", "internal/guard", "internal/pki", "internal/topic"},
	"internal/audit":            {},
	"internal/authn":            {},
	"internal/authn/passwd":     {"internal/authn"},
	"internal/authn/jwt":        {"internal/authn"},
	"internal/authn/introspect": {"internal/authn"},
	"internal/authn/ldap":       {"internal/authn"},
	"internal/authn/scram":      {"internal/authn"},
	"internal/authz":            {},
	"internal/bench":            {"e2e", "internal/packet"},
	"internal/broker":           {"internal/packet", "internal/topic"},
	// Test helper: the in-process broker other packages' tests start.
	"internal/broker/brokertest": {"internal/broker"},
	// The cluster implements the broker's Cluster seam: it builds and
	// reads the broker's Messages (as the store adapter does) and carries
	// them between nodes as PUBLISH packets of the broker's own codec;
	// a moved session's replay matches batched messages to its filters
	// with the broker's own topic matcher.
	"internal/cluster": {"internal/broker", "internal/packet", "internal/topic"},
	"internal/config":  {},
	// The guard decides on addresses and identities handed to it and
	// imports nothing of the module: the broker reaches it only through
	// calls and callbacks wired in internal/cli.
	"internal/guard": {},
	// PROXY-reported identities pass the same check as certificate ones.
	"internal/listener": {"internal/tlsconf"},
	// Metrics are collected through a Source interface that
	// internal/cli adapts; the package imports nothing of the module.
	"internal/metrics":           {},
	"internal/packet":            {},
	"internal/packet/packettest": {"internal/packet"},
	"internal/pki":               {},
	// The store wraps its data key with the key service's KEK interface
	// (key file, passphrase, KMS/HSM): one interface, two users.
	"internal/store": {"e2e/keyservice"},
	// The adapter between the broker's Persistence and the store.
	"internal/store/brokerstore": {"internal/broker", "internal/packet", "internal/store"},
	// The Mosquitto file reader checks names with the codec's rules and
	// turns what it read into store operations.
	"internal/store/mosquittodb": {"internal/packet", "internal/store"},
	"internal/tlsconf":           {},
	// Test helpers shared by every package's tests: the standard library,
	// goleak and (testpki, for its OCSP responder) x/crypto only.
	"internal/testutil":         {},
	"internal/testutil/testpki": {},
	// The throw-away OpenLDAP directory of the LDAP backend's tests and
	// the broker's end-to-end tests: started as a peer (testutil) with a
	// test CA's certificate (testpki), set up with go-ldap.
	"internal/testutil/testslapd": {"internal/testutil", "internal/testutil/testpki"},
	// Test-only package: it runs `make install` and checks the files.
	"packaging": {},
	// A tool for reading a stopped cluster's durable stream back (the
	// kill series): it decodes the records the way the cluster wrote them.
	"scripts/killseries/streamdump": {"internal/cluster"},
	// A tool that measures the reconnection storm after a node dies:
	// MQTT clients of three `moat serve` processes.
	"scripts/failoverstorm": {"client"},
	"internal/topic":        {},
	// internal/cli is the wiring layer and may import anything of the
	// module except cmd/.
}

// TestOnlyCLIWires checks every module package's direct imports against
// allowedImports.
func TestOnlyCLIWires(t *testing.T) {
	all := listModule(t)
	for path, p := range all {
		name := short(path)
		if name == "internal/cli" {
			for _, imp := range p.Imports {
				if strings.HasPrefix(imp, module+"/cmd/") {
					t.Errorf("internal/cli imports %s", short(imp))
				}
			}
			continue
		}
		allowed, ok := allowedImports[name]
		if !ok {
			if last := name[strings.LastIndex(name, "/")+1:]; strings.Contains(last, "test") {
				// Test helper packages may import what they help test.
				continue
			}
			t.Errorf("package %s has no entry in allowedImports: decide which module packages it may import", name)
			continue
		}
		for _, imp := range p.Imports {
			if !isModule(imp) {
				continue
			}
			if !slices.Contains(allowed, short(imp)) {
				t.Errorf("%s imports %s; only internal/cli wires packages together (see allowedImports)", name, short(imp))
			}
		}
	}
}
