package cli

// The durability contract end to end (docs/durability.md): the real moat
// binary with an unchanged-style mosquitto.conf (`persistence true`), a
// paho publisher streaming QoS 1 to an offline persistent subscriber, and
// the broker killed with SIGKILL while it runs.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/moatmq/moat/internal/packet"
)

// Names the no-plaintext check searches the store's files for.
const (
	crashSub      = "crash-subscriber-7f3a"
	crashPub      = "crash-publisher-2e8d"
	crashTopic    = "crash/stream-9c1e"
	crashRetTopic = "crash/retained-5d2b"
	crashRetBody  = "retained-body-b41e"
	crashQ2Sub    = "crash-q2-subscriber-61aa"
	crashQ2Pub    = "crash-q2-publisher-0d5c"
	crashQ2Topic  = "crash/exactly-once-3f70"
	crashQ2Body   = "exactly-once-body-e8b2"
	crashPayload  = "crash-payload-%06d"
)

func pahoOpts(port int, id string, clean bool) *mqtt.ClientOptions {
	return mqtt.NewClientOptions().AddBroker("tcp://127.0.0.1:" + strconv.Itoa(port)).SetClientID(id).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(5 * time.Second).SetOrderMatters(false)
}

// TestCrashDurability kills the broker with SIGKILL three times while a
// QoS 1 publisher streams to an offline persistent subscriber; every
// message the broker acknowledged is delivered afterwards, the session is
// present, the retained message is back, a QoS 2 message acknowledged
// with PUBREC before a kill is delivered exactly once, and the store's
// files show none of the payloads, topics or client IDs.
func TestCrashDurability(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	conf := filepath.Join(dir, "mosquitto.conf")
	proc := startMoatOn(t, dir, 1, func(ports []int) []string {
		os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s\n"+
			"autosave_interval 1800\n", ports[0], state), 0o600)
		return []string{"-c", conf}
	})
	// Restarts keep the port: the stored sessions name their listener.
	port := proc.port(0)

	// The persistent subscribers subscribe and go offline.
	for _, s := range []struct {
		id, topic string
		qos       byte
	}{{crashSub, crashTopic, 1}, {crashQ2Sub, crashQ2Topic, 2}} {
		c := mqtt.NewClient(pahoOpts(port, s.id, false))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscriber connect: %v", tok.Error())
		}
		if tok := c.Subscribe(s.topic, s.qos, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		c.Disconnect(100)
	}
	ret := mqtt.NewClient(pahoOpts(port, "crash-retainer", true))
	if tok := ret.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := ret.Publish(crashRetTopic, 1, true, crashRetBody); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("retained publish: %v", tok.Error())
	}
	ret.Disconnect(100)

	// QoS 2: PUBREC received, then the broker is killed before PUBREL.
	q2 := dialMQTT(t, port, crashQ2Pub)
	q2.send(&packet.Publish{Topic: crashQ2Topic, QoS: 2, PacketID: 5, Payload: []byte(crashQ2Body)})
	if _, ok := q2.recv().(*packet.Pubrec); !ok {
		t.Fatal("want PUBREC")
	}

	// The publisher streams QoS 1 messages and records what was
	// acknowledged, reconnecting after each kill.
	var mu sync.Mutex
	acked := map[int]bool{}
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		n := 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			c := mqtt.NewClient(pahoOpts(port, crashPub, true))
			if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				time.Sleep(20 * time.Millisecond) // the broker is restarting
				continue
			}
			for {
				n++
				tok := c.Publish(crashTopic, 1, false, fmt.Sprintf(crashPayload, n))
				if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					break
				}
				mu.Lock()
				acked[n] = true
				mu.Unlock()
				select {
				case <-stop:
					c.Disconnect(100)
					return
				default:
				}
			}
			c.Disconnect(0)
		}
	}()
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	for kill := 1; kill <= 3; kill++ {
		want := kill * 150
		deadline := time.Now().Add(20 * time.Second)
		for ackedCount() < want {
			if time.Now().After(deadline) {
				t.Fatalf("only %d messages acknowledged before kill %d", ackedCount(), kill)
			}
			time.Sleep(10 * time.Millisecond)
		}
		proc.cmd.Process.Kill() // SIGKILL, under load
		<-proc.done
		proc = proc.restart(t)
	}
	// A little more load on the last broker, then stop.
	target := ackedCount() + 50
	for deadline := time.Now().Add(20 * time.Second); ackedCount() < target && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-pubDone

	// QoS 2 publisher resumes: the retransmitted PUBLISH is acknowledged,
	// not delivered again.
	q2 = dialMQTT(t, port, crashQ2Pub)
	if !q2.present {
		t.Fatal("QoS 2 publisher's session not present after the kills")
	}
	q2.send(&packet.Publish{Topic: crashQ2Topic, QoS: 2, PacketID: 5, Dup: true, Payload: []byte(crashQ2Body)})
	if _, ok := q2.recv().(*packet.Pubrec); !ok {
		t.Fatal("want PUBREC for the retransmission")
	}
	q2.send(&packet.Pubrel{PacketID: 5})
	if _, ok := q2.recv().(*packet.Pubcomp); !ok {
		t.Fatal("want PUBCOMP")
	}

	// Every acknowledged message reaches the subscriber, whose session is
	// present.
	var gotMu sync.Mutex
	got := map[string]int{}
	recv := func(_ mqtt.Client, m mqtt.Message) {
		gotMu.Lock()
		got[m.Topic()+" "+string(m.Payload())]++
		gotMu.Unlock()
	}
	for _, id := range []string{crashSub, crashQ2Sub} {
		c := mqtt.NewClient(pahoOpts(port, id, false).SetDefaultPublishHandler(recv))
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		if !tok.(*mqtt.ConnectToken).SessionPresent() {
			t.Fatalf("session %s not present after the kills", id)
		}
		defer c.Disconnect(100)
	}
	mu.Lock()
	want := make([]int, 0, len(acked))
	for n := range acked {
		want = append(want, n)
	}
	mu.Unlock()
	missing := func() []int {
		gotMu.Lock()
		defer gotMu.Unlock()
		var m []int
		for _, n := range want {
			if got[crashTopic+" "+fmt.Sprintf(crashPayload, n)] == 0 {
				m = append(m, n)
			}
		}
		return m
	}
	q2count := func() int {
		gotMu.Lock()
		defer gotMu.Unlock()
		return got[crashQ2Topic+" "+crashQ2Body]
	}
	// The QoS 2 message comes on its own connection: wait for it too.
	deadline := time.Now().Add(30 * time.Second)
	for (len(missing()) > 0 || q2count() == 0) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("%d of %d acknowledged messages lost after 3 SIGKILLs, e.g. %v", len(m), len(want), m[:min(len(m), 10)])
	}
	gotMu.Lock()
	q2n := got[crashQ2Topic+" "+crashQ2Body]
	gotMu.Unlock()
	if q2n != 1 {
		t.Fatalf("QoS 2 message delivered %d times, want exactly once", q2n)
	}
	t.Logf("%d acknowledged messages, all delivered after 3 SIGKILLs", len(want))

	// The retained message is back.
	retc := mqtt.NewClient(pahoOpts(port, "crash-retained-reader", true))
	if tok := retc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	retGot := make(chan string, 1)
	retc.Subscribe(crashRetTopic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case retGot <- string(m.Payload()):
		default:
		}
	})
	select {
	case b := <-retGot:
		if b != crashRetBody {
			t.Fatalf("retained %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("retained message not back after the kills")
	}
	retc.Disconnect(100)

	// Nothing readable at rest.
	proc.cmd.Process.Kill()
	<-proc.done
	secrets := []string{crashSub, crashPub, crashTopic, crashRetTopic, crashRetBody, crashQ2Sub, crashQ2Pub, crashQ2Topic,
		crashQ2Body, "crash-payload-0000", "crash/"}
	files, _ := filepath.Glob(filepath.Join(state, "*"))
	if len(files) == 0 {
		t.Fatal("no store files in persistence_location")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains %q in plaintext", filepath.Base(f), s)
			}
		}
	}
}

// mqttConn is a minimal MQTT 3.1.1 client speaking packets directly, for
// exact control of QoS 2 packet identifiers across a broker restart.
type mqttConn struct {
	t       *testing.T
	nc      net.Conn
	r       *packet.Reader
	present bool
}

func dialMQTT(t *testing.T, port int, id string) *mqttConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V311)
	c := &mqttConn{t: t, nc: nc, r: r}
	c.send(&packet.Connect{ProtocolName: "MQTT", Version: packet.V311, ClientID: id, KeepAlive: 60})
	ack, ok := c.recv().(*packet.Connack)
	if !ok || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %#v", ack)
	}
	c.present = ack.SessionPresent
	return c
}

func (c *mqttConn) send(p packet.Packet) {
	c.t.Helper()
	b, err := packet.Append(nil, p, packet.V311)
	if err != nil {
		c.t.Fatal(err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *mqttConn) recv() packet.Packet {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}
