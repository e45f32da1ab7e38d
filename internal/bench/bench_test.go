package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
)

// startBroker runs an in-process Moat broker on 127.0.0.1:0, with TLS
// when tc is non-nil, and returns its address.
func startBroker(t testing.TB, tc *tls.Config) string {
	t.Helper()
	return brokertest.Start(t, broker.Config{AllowAnonymous: true, SysInterval: -1},
		brokertest.Options{Listener: broker.ListenerConfig{Name: "bench"}, TLS: tc}).Addr
}

// testPKI writes a PKI and returns the server and client TLS configs and
// an issuer for per-client certificates.
func testPKI(t testing.TB) (srv, cli *tls.Config, iss *Issuer) {
	t.Helper()
	dir := t.TempDir()
	if err := WritePKI(dir, ECDSAP256); err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	pair, err := tls.LoadX509KeyPair(p(PKIFiles.Server), p(PKIFiles.ServerKey))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p(PKIFiles.CA))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srv = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	cli = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	iss, err = LoadIssuer(p(PKIFiles.CA), p(PKIFiles.CAKey))
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli, iss
}

func TestRunScenarios(t *testing.T) {
	addr := startBroker(t, nil)
	key, err := e2e.NewRawKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		cfg      Config
		minDeliv int64
		lossless bool
	}{
		{"p2p qos1", Config{Scenario: P2P, Pubs: 3, Subs: 3, QoS: 1, MsgRate: 200}, 100, true},
		{"p2p qos1 unlimited", Config{Scenario: P2P, Pubs: 2, Subs: 2, QoS: 1}, 100, false},
		{"p2p qos1 persistent", Config{Scenario: P2P, Pubs: 2, Subs: 2, QoS: 1, MsgRate: 200, Persistent: true}, 100, true},
		{"fanin qos1 encrypted", Config{Scenario: FanIn, Pubs: 4, Subs: 1, QoS: 1, MsgRate: 100, Encrypt: key}, 100, true},
		{"fanout qos0", Config{Scenario: FanOut, Pubs: 1, Subs: 5, MsgRate: 200}, 100, false},
		{"shared qos1", Config{Scenario: Shared, Pubs: 2, Subs: 3, QoS: 1, MsgRate: 200}, 100, true},
		{"pub qos1", Config{Scenario: Pub, Pubs: 2, QoS: 1, MsgRate: 100}, 0, false},
		{"sub", Config{Scenario: Sub, Subs: 2}, 0, false},
		{"conn", Config{Scenario: Conn, Clients: 20, ConnRate: 200}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Addr = addr
			cfg.Duration = 700 * time.Millisecond
			cfg.Drain = 3 * time.Second
			cfg.SampleInterval = 200 * time.Millisecond
			cfg.BrokerPID = os.Getpid()
			cfg.Topic = "t/" + strings.ReplaceAll(tt.name, " ", "-")
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, res, tt.minDeliv, tt.lossless)
			if res.Params.Persistent != cfg.Persistent {
				t.Errorf("params: persistent %v", res.Params.Persistent)
			}
		})
	}
}

func checkResult(t *testing.T, res *Result, minDeliv int64, lossless bool) {
	t.Helper()
	var buf bytes.Buffer
	res.WriteTable(&buf)
	t.Log("\n" + buf.String())
	if res.Connect.Failed != 0 || res.Connect.SuccessRate != 1 {
		t.Errorf("connections: %+v, errors %v", res.Connect, res.Errors)
	}
	if res.Connect.Handshake.Count == 0 {
		t.Error("handshake histogram empty")
	}
	m := res.Messages
	if m.Delivered < minDeliv {
		t.Errorf("delivered %d, want at least %d", m.Delivered, minDeliv)
	}
	if minDeliv > 0 && res.Latency.Count == 0 || res.Latency.P50Us > res.Latency.MaxUs {
		t.Errorf("latency histogram: %+v", res.Latency)
	}
	if lossless && (m.Lost != 0 || m.Delivered != m.Expected || m.Acked != m.Sent) {
		t.Errorf("QoS 1 lost messages: %+v", m)
	}
	if m.DecryptErrors != 0 {
		t.Errorf("decrypt errors: %d", m.DecryptErrors)
	}
	if res.Broker == nil || res.Broker.RSSPeakMiB <= 0 {
		t.Errorf("broker stats missing: %+v", res.Broker)
	}
	buf.Reset()
	if err := res.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := ReadResult(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if back.Messages != res.Messages || back.Latency != res.Latency {
		t.Error("JSON round trip changed the result")
	}
	if err := res.WriteHTML(io.Discard); err != nil {
		t.Error(err)
	}
}

func TestRunMutualTLS(t *testing.T) {
	srv, cli, iss := testPKI(t)
	addr := startBroker(t, srv)
	certs, err := iss.IssueClients("dev-", 12)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"conn per-client certs", Config{Scenario: Conn, Clients: 12, ClientCerts: certs}},
		{"conn resumption", Config{Scenario: Conn, Clients: 4, ClientCerts: certs, Resume: true}},
		{"conn classical kex", Config{Scenario: Conn, Clients: 4, ClientCerts: certs[:1],
			TLS: &tls.Config{RootCAs: cli.RootCAs, ServerName: "localhost", CurvePreferences: []tls.CurveID{tls.X25519}}}},
		{"conn source addresses", Config{Scenario: Conn, Clients: 6, ClientCerts: certs, SourceAddrs: 3}},
		{"p2p qos1", Config{Scenario: P2P, Pubs: 2, Subs: 2, QoS: 1, MsgRate: 100, ClientCerts: certs}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if cfg.TLS == nil {
				cfg.TLS = cli
			}
			cfg.Addr = addr
			cfg.Duration = 500 * time.Millisecond
			cfg.SampleInterval = 100 * time.Millisecond
			cfg.BrokerPID = os.Getpid()
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, res, 0, cfg.Scenario == P2P)
			if cfg.Resume && res.Connect.Resumed != res.Connect.Succeeded {
				t.Errorf("resumed %d of %d", res.Connect.Resumed, res.Connect.Succeeded)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := Run(context.Background(), Config{Scenario: "nope", QoS: 3, PayloadSize: 8, SourceAddrs: 2, Addr: "example.com:1"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"unknown scenario", "QoS 3", "payload size", "loopback"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestRunSubAddr: with SubAddr, subscribers connect there and publishers
// to Addr (two listeners of one broker here; two nodes of a cluster in
// docs/performance.md), and the run pauses Settle before publishing.
func TestRunSubAddr(t *testing.T) {
	b := brokertest.Start(t, broker.Config{AllowAnonymous: true, SysInterval: -1},
		brokertest.Options{Listener: broker.ListenerConfig{Name: "pubs"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Server.Serve(context.Background(), ln, broker.ListenerConfig{Name: "subs"}) }()
	t.Cleanup(func() { b.Stop(); <-served })
	listeners := map[string]string{}
	cfg := Config{Scenario: P2P, Pubs: 2, Subs: 2, QoS: 1, MsgRate: 100, Addr: b.Addr, SubAddr: ln.Addr().String(),
		Settle: 300 * time.Millisecond, Duration: 500 * time.Millisecond, Drain: 3 * time.Second, Topic: "t/subaddr",
		BrokerPID: os.Getpid(), SampleInterval: 200 * time.Millisecond,
		OnConnected: func() {
			for _, c := range b.Server.Clients() {
				listeners[c.Client.ClientID] = c.Client.Listener
			}
		}}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, 20, true)
	if len(listeners) != 4 {
		t.Fatalf("clients: %v", listeners)
	}
	for id, l := range listeners {
		if want := map[bool]string{true: "subs", false: "pubs"}[strings.Contains(id, "-s")]; l != want {
			t.Errorf("client %s connected to %s, want %s", id, l, want)
		}
	}
	if res.Params.SubAddr != cfg.SubAddr {
		t.Errorf("params %+v", res.Params)
	}
}
