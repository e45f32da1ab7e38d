package mosquittodb

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// mosquittoBroker is Debian's mosquitto started for a test with
// persistence in a directory of the test.
type mosquittoBroker struct {
	*testutil.RunningPeer
	addr, port string
	dir        string // persistence_location
}

// startMosquitto starts mosquitto on 127.0.0.1 with persistence on
// (testutil.StartMosquitto: a port taken before mosquitto binds it is
// retried). The broker is killed when the test ends unless stop ran.
func startMosquitto(t *testing.T) *mosquittoBroker {
	t.Helper()
	dir := t.TempDir()
	p := testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
persistence_file mosquitto.db
autosave_interval 0
log_dest stderr
log_type error
log_type warning
log_type information
`, ports[0], dir)
	})
	return &mosquittoBroker{RunningPeer: p, addr: p.Addr(0), port: strconv.Itoa(p.Ports[0]), dir: dir}
}

// stop sends SIGTERM, waits for mosquitto to save and exit, and returns
// the file it wrote.
func (m *mosquittoBroker) stop(t *testing.T) []byte {
	t.Helper()
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "mosquitto to save and stop", 20*time.Second, m.Exited)
	b, err := os.ReadFile(filepath.Join(m.dir, "mosquitto.db"))
	if err != nil {
		t.Fatalf("mosquitto wrote no file: %v\n%s", err, m.Log())
	}
	return b
}

// run runs a Debian mosquitto client against the broker.
func (m *mosquittoBroker) run(t *testing.T, tool string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed (apt-get install mosquitto-clients)", tool)
	}
	cmd := exec.Command(tool, append([]string{"-h", "127.0.0.1", "-p", m.port}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", tool, args, err, out)
	}
}

// rawClient speaks MQTT packet by packet, for what the Debian clients
// cannot do: subscription options and identifiers, and a message left
// unacknowledged (in flight) when the connection ends.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	r  *packet.Reader
	v  packet.Version
}

func dialRaw(t *testing.T, addr string, c *packet.Connect) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, nc: nc, r: packet.NewReader(nc, 1<<20), v: c.Version}
	rc.r.SetVersion(c.Version)
	rc.send(c)
	if ack, ok := rc.read().(*packet.Connack); !ok || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %+v", ack)
	}
	return rc
}

func (c *rawClient) send(p packet.Packet) {
	c.t.Helper()
	b, err := packet.Append(nil, p, c.v)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) read() packet.Packet {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// generate runs mosquitto, leaves in it what the import must carry over
// (retained messages of every QoS with MQTT 5 properties, persistent
// MQTT 3.1.1 and 5 sessions with subscriptions and options, queued and
// in-flight messages), stops it and returns the file it saved.
func generate(t *testing.T) []byte {
	m := startMosquitto(t)

	// An MQTT 5 session (one hour) with options and an identifier; one
	// QoS 1 message is left in flight (never acknowledged).
	var props packet.Properties
	props.SetSessionExpiry(3600)
	v5 := dialRaw(t, m.addr, &packet.Connect{ProtocolName: "MQTT", Version: packet.V5, ClientID: "dev-v5",
		UsernameFlag: true, Username: "operator", KeepAlive: 60, Properties: props})
	var subProps packet.Properties
	subProps.AddSubscriptionID(7)
	v5.send(&packet.Subscribe{PacketID: 1, Properties: subProps, Subscriptions: []packet.Subscription{
		{Filter: "plant/+/temp", QoS: 1, NoLocal: true, RetainAsPublished: true},
		{Filter: "plant/alarm", QoS: 2},
	}})
	if _, ok := v5.read().(*packet.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	m.run(t, "mosquitto_pub", "-V", "5", "-q", "1", "-t", "plant/1/temp", "-m", "in flight")
	if p, ok := v5.read().(*packet.Publish); !ok || string(p.Payload) != "in flight" {
		t.Fatalf("expected the in-flight PUBLISH, got %+v", p)
	}
	v5.nc.Close() // without PUBACK: the message stays in flight

	// An MQTT 3.1.1 persistent session.
	m.run(t, "mosquitto_sub", "-V", "311", "-c", "-i", "dev-v311", "-q", "2", "-t", "fleet/#", "-t", "$SYS/broker/uptime", "-E")

	// Retained messages, QoS 0, 1 and 2, one with every PUBLISH property.
	m.run(t, "mosquitto_pub", "-r", "-q", "0", "-t", "plant/status", "-m", "up")
	m.run(t, "mosquitto_pub", "-V", "5", "-r", "-q", "1", "-t", "plant/1/config", "-m", `{"interval":5}`,
		"-D", "publish", "content-type", "application/json",
		"-D", "publish", "payload-format-indicator", "1",
		"-D", "publish", "response-topic", "plant/1/reply",
		"-D", "publish", "correlation-data", "req-42",
		"-D", "publish", "message-expiry-interval", "86400",
		"-D", "publish", "user-property", "site", "north",
		"-D", "publish", "user-property", "site", "south")
	m.run(t, "mosquitto_pub", "-r", "-q", "2", "-t", "fleet/config", "-m", "v2")

	// Queued while the sessions are offline.
	m.run(t, "mosquitto_pub", "-V", "5", "-q", "1", "-t", "plant/2/temp", "-m", "21.5")
	m.run(t, "mosquitto_pub", "-q", "2", "-t", "fleet/truck/7", "-m", "queued qos 2")
	m.run(t, "mosquitto_pub", "-q", "1", "-t", "plant/alarm", "-m", "overheat")
	return m.stop(t)
}
