package cli

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/pki"
)

// hostAddrs returns the host's non-loopback, non-link-local addresses.
func hostAddrs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() && !n.IP.IsMulticast() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

func serverCertOf(t *testing.T, dataDir string) (names []string, serial string) {
	t.Helper()
	certs, err := pki.LoadCertificatesFile(filepath.Join(dataDir, "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range certs[0].DNSNames {
		names = append(names, "DNS:"+d)
	}
	for _, ip := range certs[0].IPAddresses {
		names = append(names, "IP:"+ip.String())
	}
	return names, pki.SerialString(certs[0].SerialNumber)
}

// TestZeroConfigServerCertNamesHostAddresses: a device on the network
// connects to the broker by one of the host's addresses; the zero-config
// server certificate must name it, or the device's verification fails
// (checked with openssl verify -verify_ip, as a TLS client would).
func TestZeroConfigServerCertNamesHostAddresses(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	zc, err := prepareZeroConfig(data, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	names, _ := serverCertOf(t, data)
	for _, want := range []string{"DNS:localhost", "IP:127.0.0.1", "IP:::1"} {
		if !slices.Contains(names, want) {
			t.Errorf("server certificate lacks %s: %v", want, names)
		}
	}
	addrs := hostAddrs(t)
	if len(addrs) == 0 {
		t.Skip("this host has no non-loopback address")
	}
	openssl, err := exec.LookPath("openssl")
	for _, ip := range addrs {
		if !slices.Contains(names, "IP:"+ip) {
			t.Errorf("server certificate lacks the host address %s: %v", ip, names)
		}
		if err == nil {
			o, verr := exec.Command(openssl, "verify", "-CAfile", zc.caFile, "-untrusted", zc.serverCert, "-verify_ip", ip, zc.serverCert).CombinedOutput()
			if verr != nil {
				t.Errorf("openssl verify -verify_ip %s: %v\n%s", ip, verr, o)
			}
		}
	}
}

// TestZeroConfigServerNamesChosen: --san / tls.server_names replace the
// automatic names; a change reissues the certificate at start, an
// unchanged list keeps it.
func TestZeroConfigServerNamesChosen(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	if _, err := prepareZeroConfig(data, nil, log); err != nil {
		t.Fatal(err)
	}
	_, auto := serverCertOf(t, data)
	if _, err := prepareZeroConfig(data, nil, log); err != nil {
		t.Fatal(err)
	}
	if _, s := serverCertOf(t, data); s != auto {
		t.Fatal("unchanged names reissued the certificate")
	}
	chosen := []string{"DNS:mqtt.example.com,IP:192.0.2.7"}
	if _, err := prepareZeroConfig(data, chosen, log); err != nil {
		t.Fatal(err)
	}
	names, s1 := serverCertOf(t, data)
	if s1 == auto || !slices.Equal(names, []string{"DNS:mqtt.example.com", "IP:192.0.2.7"}) {
		t.Fatalf("after choosing names: %v (serial changed: %v)", names, s1 != auto)
	}
	if _, err := prepareZeroConfig(data, []string{"IP:192.0.2.7", "DNS:mqtt.example.com"}, log); err != nil {
		t.Fatal(err)
	}
	if _, s := serverCertOf(t, data); s != s1 {
		t.Fatal("the same names in another order reissued the certificate")
	}
	if _, err := prepareZeroConfig(data, []string{"auto", "DNS:mqtt.example.com"}, log); err != nil {
		t.Fatal(err)
	}
	if names, _ := serverCertOf(t, data); !slices.Contains(names, "DNS:localhost") || !slices.Contains(names, "DNS:mqtt.example.com") {
		t.Fatalf("auto plus a name: %v", names)
	}
	for _, bad := range []string{"URI:spiffe://x/y", "DNS:bad name", "IP:300.1.1.1"} {
		if _, err := prepareZeroConfig(data, []string{bad}, log); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestZeroServerNamesFromYAML(t *testing.T) {
	cfg, err := config.Parse("moat.yaml", []byte("listeners:\n  - address: \"127.0.0.1:0\"\n    tls:\n      server_names: [\"DNS:mqtt.example.com\", \"IP:192.0.2.7\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	names, err := zeroServerNames(cfg, nil)
	if err != nil || strings.Join(names, ",") != "DNS:mqtt.example.com,IP:192.0.2.7" {
		t.Fatalf("%v %v", names, err)
	}
	if names, _ := zeroServerNames(cfg, []string{"DNS:flag.example"}); strings.Join(names, ",") != "DNS:flag.example" {
		t.Fatalf("--san does not win: %v", names)
	}
	// server_names with a certificate of one's own is a mistake: refused
	// by the configuration check (moat serve --check) with the line.
	_, err = config.Parse("moat.yaml", []byte("listeners:\n  - address: \"127.0.0.1:0\"\n    tls:\n      cert: a.pem\n      key: a.key\n      server_names: [\"DNS:x.example\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "moat.yaml:2") || !strings.Contains(err.Error(), "server_names") {
		t.Fatalf("server_names with tls.cert: %v", err)
	}
	cfg.Listeners[0].TLS.Cert = "a.pem"
	if _, err := zeroServerNames(cfg, nil); err == nil {
		t.Fatal("server_names with tls.cert accepted")
	}
}

// TestServeSANFlag starts the broker with --san and checks, with openssl
// s_client as a device would, that the server certificate verifies for a
// chosen name and not for another.
func TestServeSANFlag(t *testing.T) {
	t.Parallel()
	needTool(t, "openssl")
	dir := t.TempDir()
	conf := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(conf, []byte("listeners:\n  - address: \"127.0.0.1:0\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := startMoat(t, dir, "-c", conf, "--data", filepath.Join(dir, "data"), "--san", "DNS:mqtt.example.test,IP:127.0.0.1").port(0)
	caFile := filepath.Join(dir, "data", "ca", "ca.pem")
	connect := func(host string) string {
		out, _ := exec.Command("openssl", "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", port), "-servername", host,
			"-verify_hostname", host, "-CAfile", caFile, "-brief").CombinedOutput()
		return string(out)
	}
	if out := connect("mqtt.example.test"); !strings.Contains(out, "Verification: OK") {
		t.Fatalf("chosen name does not verify:\n%s", out)
	}
	if out := connect("localhost"); strings.Contains(out, "Verification: OK") {
		t.Fatalf("a name not chosen verifies:\n%s", out)
	}
}
