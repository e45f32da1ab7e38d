package cli

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// ownerClient is a bare MQTT client over plain TCP or TLS for the session
// owner tests: it sends exactly the packets a test builds.
type ownerClient struct {
	t  *testing.T
	nc net.Conn
	r  *packet.Reader
	v  packet.Version
}

// dialOwner connects to addr: plain TCP when caFile is empty, else TLS
// verifying the server against caFile and presenting the certificate
// certPrefix.pem/.key when certPrefix is not empty.
func dialOwner(t *testing.T, addr, caFile, certPrefix string, v packet.Version) *ownerClient {
	t.Helper()
	var nc net.Conn
	var err error
	d := &net.Dialer{Timeout: 5 * time.Second}
	if caFile == "" {
		nc, err = d.Dial("tcp", addr)
	} else {
		pem, rerr := os.ReadFile(caFile)
		if rerr != nil {
			t.Fatal(rerr)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
		if certPrefix != "" {
			cert, cerr := tls.LoadX509KeyPair(certPrefix+".pem", certPrefix+".key")
			if cerr != nil {
				t.Fatal(cerr)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		nc, err = tls.DialWithDialer(d, "tcp", addr, cfg)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(v)
	return &ownerClient{t: t, nc: nc, r: r, v: v}
}

func (c *ownerClient) send(p packet.Packet) {
	c.t.Helper()
	b, err := packet.Append(nil, p, c.v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *ownerClient) recv() packet.Packet {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return p
}

// connect sends CONNECT for id (clean false: a persistent session, one
// hour for v5) with an optional username, and returns the CONNACK.
func (c *ownerClient) connect(id, user string, clean bool) *packet.Connack {
	c.t.Helper()
	p := &packet.Connect{Version: c.v, ProtocolName: "MQTT", ClientID: id, CleanStart: clean, KeepAlive: 30}
	if user != "" {
		p.UsernameFlag, p.Username = true, user
	}
	if c.v == packet.V5 && !clean {
		p.Properties.SessionExpiry = 3600
		p.Properties.Mark(packet.PropSessionExpiry)
	}
	c.send(p)
	ack, ok := c.recv().(*packet.Connack)
	if !ok {
		c.t.Fatal("expected CONNACK")
	}
	return ack
}

// TestSecurityServeSessionOwner runs `moat serve` with three listeners and
// performs the session takeover attacks of the security review against
// two victims that hold persistent sessions with a queued message:
//
//   - (a) another device's certificate on the mutual-TLS listener, with the
//     victim's client ID;
//   - (b) no certificate on an optional-certificate listener with
//     bind_client_id, with the client ID the victim's certificate binds;
//   - (c) an anonymous client on the plain listener with either victim's
//     client ID, also claiming the victim's name as username.
//
// Each attack is tried with clean session 0 (to steal the session and its
// messages) and 1 (to kick the victim off). The broker must refuse each
// with 0x85 (v5) / 0x02 (3.1.1), log why, and the victims must find their
// sessions and queued messages.
func TestSecurityServeSessionOwner(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: certs
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
  - name: bound
    address: 127.0.0.1:0
    transport: tls
    allow_anonymous: true
    tls:
      client_auth: optional
      identity:
        client_id_from: cn
        bind_client_id: true
  - name: plain
    address: 127.0.0.1:0
    transport: tcp
    allow_anonymous: true
data_dir: data
persistence:
  enabled: false
acl:
  rules:  # the victims' queues; the session owner is under test, not the policy
    - {name: queues, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["q/#"]}
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	ca := filepath.Join(dir, "data", "ca")
	caFile := filepath.Join(ca, "ca.pem")
	certs, bound, plain := p.addr(0), p.addr(1), p.addr(2)
	for _, name := range []string{"a-v3", "a-v5", "b-v3", "b-v5", "mallory"} {
		moatCmd(t, dir, "ca", "issue", "device", name, "--dir", ca, "--out", name)
	}
	cert := func(name string) string { return filepath.Join(dir, name) }

	for _, v := range []packet.Version{packet.V311, packet.V5} {
		sfx, want := "v3", packet.V3IdentifierRejected
		if v == packet.V5 {
			sfx, want = "v5", packet.ClientIDNotValid
		}
		t.Run(sfx, func(t *testing.T) {
			victimA, victimB := "a-"+sfx, "b-"+sfx
			// Victim A on the mutual-TLS listener, victim B on the
			// bound listener (client ID = its CN); both subscribe and
			// leave a persistent session.
			victims := []struct {
				id, addr string
			}{{victimA, certs}, {victimB, bound}}
			for _, vc := range victims {
				c := dialOwner(t, vc.addr, caFile, cert(vc.id), v)
				if ack := c.connect(vc.id, "", false); ack.ReasonCode != 0 {
					t.Fatalf("victim %s refused: %#x", vc.id, byte(ack.ReasonCode))
				}
				c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "q/" + vc.id, QoS: 1}}})
				if _, ok := c.recv().(*packet.Suback); !ok {
					t.Fatal("expected SUBACK")
				}
				c.send(&packet.Disconnect{})
				c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.r.ReadPacket(); err == nil {
					t.Fatal("connection still open after DISCONNECT")
				}
			}
			pub := dialOwner(t, certs, caFile, cert("mallory"), packet.V311)
			if ack := pub.connect("mallory-pub-"+sfx, "", true); ack.ReasonCode != 0 {
				t.Fatalf("publisher refused: %#x", byte(ack.ReasonCode))
			}
			for i, vc := range victims {
				pub.send(&packet.Publish{Topic: "q/" + vc.id, QoS: 1, PacketID: uint16(i + 1), Payload: []byte("queued for " + vc.id)})
				if _, ok := pub.recv().(*packet.Puback); !ok {
					t.Fatal("expected PUBACK")
				}
			}

			attacks := []struct {
				name, addr, cert, id, user string
			}{
				{"(a) other certificate", certs, "mallory", victimA, ""},
				{"(b) no certificate on bind_client_id listener", bound, "", victimB, ""},
				{"(c) anonymous plain listener, victim A", plain, "", victimA, ""},
				{"(c) anonymous plain listener, victim B", plain, "", victimB, ""},
				{"(c) anonymous plain listener claiming the username", plain, "", victimA, victimA},
			}
			for _, a := range attacks {
				for _, clean := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s clean=%v", a.name, clean), func(t *testing.T) {
						caf, cp := caFile, ""
						if a.addr == plain {
							caf = ""
						}
						if a.cert != "" {
							cp = cert(a.cert)
						}
						c := dialOwner(t, a.addr, caf, cp, v)
						ack := c.connect(a.id, a.user, clean)
						if ack.ReasonCode != want || ack.SessionPresent {
							t.Fatalf("attacker CONNACK code %#x session present %v, want %#x", byte(ack.ReasonCode), ack.SessionPresent, byte(want))
						}
					})
				}
			}

			for _, vc := range victims {
				c := dialOwner(t, vc.addr, caFile, cert(vc.id), v)
				if ack := c.connect(vc.id, "", false); ack.ReasonCode != 0 || !ack.SessionPresent {
					t.Fatalf("victim %s: code %#x session present %v, want its session", vc.id, byte(ack.ReasonCode), ack.SessionPresent)
				}
				m, ok := c.recv().(*packet.Publish)
				if !ok || string(m.Payload) != "queued for "+vc.id {
					t.Fatalf("victim %s did not get its queued message: %#v", vc.id, m)
				}
			}
		})
	}
	if !p.waitLog(t, "client ID in use by another identity", "this listener binds client IDs to certificates") {
		t.Error("refusals not logged with their reasons")
	}
}
