package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
	"github.com/moatmq/moat/internal/tlsconf"
)

// benchPolicy compiles 10,000 rules: per-device trees with wildcards,
// group rules with %u, wildcard patterns selected by the first level,
// the collector's grant near the end and a final deny.
func benchPolicy(tb testing.TB) *authz.Policy {
	tb.Helper()
	all := []string{"publish", "subscribe", "receive"}
	var rules []authz.RuleSpec
	for i := range 8000 {
		u := fmt.Sprintf("dev%d", i)
		rules = append(rules, authz.RuleSpec{Effect: "allow", Subjects: authz.Subjects{Usernames: []string{u}}, Actions: all,
			Topics: []string{"devices/" + u + "/#", "fleet/+/" + u}})
	}
	for i := range 1000 {
		g := fmt.Sprintf("g%d", i)
		rules = append(rules, authz.RuleSpec{Effect: "allow", Subjects: authz.Subjects{Groups: []string{g}}, Actions: all,
			Topics: []string{"groups/" + g + "/+/status", "groups/" + g + "/%u/#"}})
	}
	for i := range 998 {
		rules = append(rules, authz.RuleSpec{Effect: "allow", Subjects: authz.Subjects{All: true}, Actions: []string{"receive"},
			Topics: []string{fmt.Sprintf("area%d/+/temp", i), fmt.Sprintf("+/k%d/%%c/#", i)}})
	}
	rules = append(rules, authz.RuleSpec{Name: "collector", Effect: "allow", Subjects: authz.Subjects{Usernames: []string{"collector"}},
		Actions: []string{"subscribe", "receive"}, Topics: []string{"devices/+/data", "devices/+/data/+"}})
	rules = append(rules, authz.RuleSpec{Name: "deny-rest", Effect: "deny", Subjects: authz.Subjects{All: true}, Actions: all, Topics: []string{"#"}})
	if len(rules) != 10000 {
		tb.Fatalf("%d rules", len(rules))
	}
	p, err := authz.New(authz.Options{Rules: rules})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchPKI is the mutual TLS of the benchmark: a root, the broker's
// certificate and a client certificate per device (CN = the device).
type benchPKI struct {
	root   *testpki.Cert
	server *testpki.Cert
	mu     sync.Mutex
	certs  map[string]tls.Certificate
}

func (p *benchPKI) client(b *testing.B, cn string) tls.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.certs[cn]; ok {
		return c
	}
	c := p.root.Issue(b, testpki.Options{CN: cn, EKU: testpki.ClientAuth}).TLS()
	p.certs[cn] = c
	return c
}

// benchServe starts a broker. Over TCP its clients are authenticated as
// the username their client ID starts with (up to a '-'); with pki the
// listener requires a client certificate and the certificate's CN is the
// username, as use_identity_as_username. With pol the policy decides,
// without it the listener has no policy (the same Authorizer, allowing
// everything).
func benchServe(b *testing.B, pol *authz.Policy, pki *benchPKI) (string, *broker.Server) {
	b.Helper()
	az := &accessAuthorizer{byLn: map[string]*policySource{}}
	if pol != nil {
		az.byLn["bench"] = &policySource{holder: authz.NewHolder(pol)}
	}
	var authn broker.Authenticator = broker.AuthenticatorFunc(func(_ context.Context, r *broker.ConnectRequest) broker.AuthResult {
		id := r.Client.ClientID
		for i := range len(id) {
			if id[i] == '-' {
				id = id[:i]
				break
			}
		}
		return broker.AuthResult{Allow: true, Username: id}
	})
	if pki != nil {
		authn = &certAuthenticator{mappings: map[string]tlsconf.IdentityMapping{"bench": {Username: tlsconf.IdentityCN}}}
	}
	o := brokertest.Options{Listener: broker.ListenerConfig{Name: "bench"}}
	if pki != nil {
		o.TLS = &tls.Config{
			Certificates: []tls.Certificate{pki.server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pki.root.Pool(),
			MinVersion:   tls.VersionTLS12,
		}
	}
	srv := brokertest.Start(b, broker.Config{
		Authenticator: authn,
		Authorizer:    az,
		SysInterval:   -1,
	}, o)
	return srv.Addr, srv.Server
}

// benchConn connects id and subscribes it to filter when one is given;
// with pki over mutual TLS with the certificate of id's device.
func benchConn(b *testing.B, addr, id, filter string, pki *benchPKI) (net.Conn, *packet.Reader) {
	b.Helper()
	var nc net.Conn
	var err error
	if pki != nil {
		dev, _, _ := strings.Cut(id, "-")
		nc, err = tls.Dial("tcp", addr, &tls.Config{
			Certificates: []tls.Certificate{pki.client(b, dev)},
			RootCAs:      pki.root.Pool(),
			ServerName:   "localhost",
		})
	} else {
		nc, err = net.Dial("tcp", addr)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	buf, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: id, CleanStart: true}, packet.V311)
	if filter != "" {
		buf, _ = packet.Append(buf, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: 1}}}, packet.V311)
	}
	nc.Write(buf)
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V311)
	want := 1
	if filter != "" {
		want = 2
	}
	for range want {
		p, err := r.ReadPacket()
		if err != nil {
			b.Fatalf("%s: %v", id, err)
		}
		if ca, ok := p.(*packet.Connack); ok && ca.ReasonCode != 0 {
			b.Fatalf("%s: CONNACK %v", id, ca.ReasonCode)
		}
		if sa, ok := p.(*packet.Suback); ok && sa.ReasonCodes[0] != 1 {
			b.Fatalf("%s: SUBACK %v", id, sa.ReasonCodes)
		}
	}
	return nc, r
}

// ackAll acknowledges every QoS 1 PUBLISH r yields, counts it and
// returns a token to its publishers.
func ackAll(nc net.Conn, r *packet.Reader, n *atomic.Int64, tokens chan struct{}) {
	var ack []byte
	for {
		p, err := r.ReadPacket()
		if err != nil {
			return
		}
		if pub, ok := p.(*packet.Publish); ok {
			ack, _ = packet.Append(ack[:0], &packet.Puback{PacketID: pub.PacketID}, packet.V311)
			nc.Write(ack)
			n.Add(1)
			<-tokens
		}
	}
}

// publishQoS1 sends count QoS 1 messages on topic, or on topic/K for K
// cycling through 0..spread-1 when spread > 0, taking a token for each:
// at most cap(tokens) messages are on their way to the subscriber (the
// broker's PUBACKs are read and discarded by the caller), so the figure
// is end-to-end throughput without queue drops.
func publishQoS1(nc net.Conn, topic string, spread, count int, tokens chan struct{}) {
	w := bufio.NewWriterSize(nc, 32<<10)
	payload := make([]byte, 64)
	topics := []string{topic}
	if spread > 0 {
		topics = topics[:0]
		for k := range spread {
			topics = append(topics, fmt.Sprintf("%s/%d", topic, k))
		}
	}
	var buf []byte
	for i := range count {
		select {
		case tokens <- struct{}{}:
		default:
			w.Flush()
			tokens <- struct{}{}
		}
		buf, _ = packet.Append(buf[:0], &packet.Publish{Topic: topics[i%len(topics)], QoS: 1, PacketID: uint16(i%65535 + 1), Payload: payload}, packet.V311)
		w.Write(buf)
	}
	w.Flush()
}

// BenchmarkAccessControl compares QoS 1 throughput with the 10,000-rule
// policy (acl=true) against the same broker without a policy (acl=false;
// the policy is compiled and kept in memory all the same, so that both
// runs have the same heap and garbage collector pacing):
//
//   - p2p: 10 device pairs each publishing on its own tree to its own
//     subscriber, over TCP;
//   - p2p-mtls: the same over mutual TLS, the certificate's CN being the
//     username;
//   - fanin: 50 devices publishing to one collector whose grant is rule
//     9,999;
//   - fanin-topics: the same with each device cycling through 100
//     subtopics, so that the collector reads 5,000 topics, more than its
//     decision cache holds: most of its decisions go to the policy.
//
// Recorded in docs/performance.md, "Access control".
func BenchmarkAccessControl(b *testing.B) {
	pol := benchPolicy(b)
	defer runtime.KeepAlive(pol)
	root := testpki.NewRoot(b, "bench root", testpki.P256)
	pki := &benchPKI{root: root, server: root.Issue(b, testpki.ServerOptions()), certs: map[string]tls.Certificate{}}
	for _, mode := range []string{"p2p", "p2p-mtls", "fanin", "fanin-topics"} {
		for _, acl := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/acl=%v", mode, acl), func(b *testing.B) {
				var usePol *authz.Policy
				if acl {
					usePol = pol
				}
				var usePKI *benchPKI
				if mode == "p2p-mtls" {
					usePKI = pki
				}
				addr, srv := benchServe(b, usePol, usePKI)
				fanin := strings.HasPrefix(mode, "fanin")
				pubs, spread := 10, 0
				if fanin {
					pubs = 50
				}
				if mode == "fanin-topics" {
					spread = 100
				}
				var received atomic.Int64
				var readers sync.WaitGroup
				var subs []net.Conn // every connection
				defer func() {
					for _, nc := range subs {
						nc.Close()
					}
					readers.Wait()
				}()
				shared := make(chan struct{}, 200) // fan-in: the collector's window
				if fanin {
					filter := "devices/+/data"
					if spread > 0 {
						filter = "devices/+/data/+"
					}
					nc, r := benchConn(b, addr, "collector-0", filter, usePKI)
					subs = append(subs, nc)
					readers.Go(func() { ackAll(nc, r, &received, shared) })
				}
				type pub struct {
					nc     net.Conn
					topic  string
					tokens chan struct{}
				}
				var list []pub
				for i := range pubs {
					dev := fmt.Sprintf("dev%d", i*97)
					topic := "devices/" + dev + "/data"
					tokens := shared
					if !fanin {
						tokens = make(chan struct{}, 100)
						nc, r := benchConn(b, addr, dev+"-sub", "devices/"+dev+"/#", usePKI)
						subs = append(subs, nc)
						readers.Go(func() { ackAll(nc, r, &received, tokens) })
					}
					nc, _ := benchConn(b, addr, dev+"-pub", "", usePKI)
					subs = append(subs, nc) // closed, and its reader waited for, at the end
					readers.Go(func() { io.Copy(io.Discard, nc) })
					list = append(list, pub{nc, topic, tokens})
				}
				per := b.N/pubs + 1
				cpu0 := testutil.ProcessCPU()
				b.ResetTimer()
				var wg sync.WaitGroup
				for _, p := range list {
					wg.Go(func() { publishQoS1(p.nc, p.topic, spread, per, p.tokens) })
				}
				wg.Wait()
				total := int64(per * pubs)
				deadline := time.Now().Add(60 * time.Second)
				for received.Load() < total {
					if time.Now().After(deadline) {
						b.Fatalf("received %d of %d: %+v", received.Load(), total, srv.Stats())
					}
					time.Sleep(100 * time.Microsecond)
				}
				b.StopTimer()
				cpu := testutil.ProcessCPU() - cpu0
				if st := srv.Stats(); st.AuthzDenied != 0 {
					b.Fatalf("%d requests denied: the policy must allow the whole run", st.AuthzDenied)
				}
				b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
				// CPU time of the whole process (broker and clients) per
				// message: less disturbed than throughput by other
				// programs on a shared machine.
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(total), "cpu-ns/msg")
			})
		}
	}
}
