package broker

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// sysOmitted are Mosquitto's $SYS topics Moat does not publish, with the
// reason (docs/operations.md repeats them).
var sysOmitted = map[string]string{
	"$SYS/broker/timestamp":   "the build time of Mosquitto; Moat's build is in $SYS/broker/version and `moat version`",
	"$SYS/broker/connection/": "Mosquitto bridges; Moat has none",
}

func omitted(topic string) bool {
	for prefix := range sysOmitted {
		if strings.HasPrefix(topic, prefix) {
			return true
		}
	}
	return false
}

// collectSys connects to addr, makes a little traffic (a retained QoS 1
// message), subscribes to $SYS/# and returns the topics and payloads
// received within d.
func collectSys(t *testing.T, addr string, d time.Duration) map[string]string {
	t.Helper()
	c := dialRaw(t, addr, packet.V311)
	if ack := c.connect(&packet.Connect{ClientID: "sys-watcher", CleanStart: true, KeepAlive: 60}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", byte(ack.ReasonCode))
	}
	c.send(&packet.Publish{Topic: "sys/test", QoS: 1, PacketID: 1, Retain: true, Payload: []byte("x")})
	if _, ok := c.recv().(*packet.Puback); !ok {
		t.Fatal("expected PUBACK")
	}
	c.send(&packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "$SYS/#"}}})
	got := map[string]string{}
	deadline := time.Now().Add(d)
	for {
		p, err := c.recvErr(time.Until(deadline))
		if err != nil {
			if !isTimeout(err) {
				t.Fatal(err)
			}
			return got
		}
		if pub, ok := p.(*packet.Publish); ok {
			got[pub.Topic] = string(pub.Payload)
		}
	}
}

// TestSysLikeMosquitto subscribes to $SYS/# on Debian's Mosquitto and on
// Moat and compares the topics: Moat publishes every topic Mosquitto
// does, except those sysOmitted names, with payloads in the same format.
func TestSysLikeMosquitto(t *testing.T) {
	m := testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nsys_interval 1\npersistence false\n", ports[0])
	})
	_, addr := testServer(t, Config{SysInterval: 200 * time.Millisecond, Version: "moat test"})

	// Mosquitto publishes the load averages after its first interval.
	mq := collectSys(t, m.Addr(0), 2500*time.Millisecond)
	moat := collectSys(t, addr, 1500*time.Millisecond)
	if len(mq) < 40 {
		t.Fatalf("Mosquitto published only %d $SYS topics:\n%v", len(mq), mq)
	}
	var missing []string
	for topic := range mq {
		if _, ok := moat[topic]; !ok && !omitted(topic) {
			missing = append(missing, topic)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("Moat does not publish %d of Mosquitto's $SYS topics:\n%s", len(missing), strings.Join(missing, "\n"))
	}

	// The same payload formats: integers, "N seconds", two decimals.
	load := regexp.MustCompile(`^\d+\.\d\d$`)
	for topic, mv := range mq {
		v, ok := moat[topic]
		if !ok {
			continue
		}
		switch {
		case topic == "$SYS/broker/version":
			if !strings.HasPrefix(v, "moat") {
				t.Errorf("%s = %q", topic, v)
			}
		case topic == "$SYS/broker/uptime":
			if !strings.HasSuffix(v, " seconds") || !strings.HasSuffix(mv, " seconds") {
				t.Errorf("%s = %q (Mosquitto %q)", topic, v, mv)
			}
		case strings.HasPrefix(topic, "$SYS/broker/load/"):
			if !load.MatchString(v) || !load.MatchString(mv) {
				t.Errorf("%s = %q (Mosquitto %q); want two decimals", topic, v, mv)
			}
		default:
			if _, err := strconv.ParseInt(v, 10, 64); err != nil {
				t.Errorf("%s = %q (Mosquitto %q); want an integer", topic, v, mv)
			}
		}
	}
	var extra []string
	for topic := range moat {
		if _, ok := mq[topic]; !ok {
			extra = append(extra, topic)
		}
	}
	slices.Sort(extra)
	t.Logf("Moat's own $SYS topics:\n%s", strings.Join(extra, "\n"))

	// Values that mean the same on both.
	for _, topic := range []string{"$SYS/broker/clients/connected", "$SYS/broker/publish/messages/received"} {
		if moat[topic] != "1" {
			t.Errorf("%s = %q on Moat, want 1", topic, moat[topic])
		}
	}
}

// TestSysLoads: the load averages follow Mosquitto's formula, a rate per
// minute averaged exponentially over 1, 5 and 15 minutes.
func TestSysLoads(t *testing.T) {
	var l sysLoads
	t0 := time.Unix(1000, 0)
	l.update(t0, [numLoads]int64{})
	// 600 messages in 10 s: 3600 a minute.
	l.update(t0.Add(10*time.Second), [numLoads]int64{loadPublishReceived: 600})
	for w, win := range loadWindows {
		want := 3600 * (1 - math.Exp(-10/win.secs))
		if got := l.avg[loadPublishReceived][w]; math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: %v, want %v", win.name, got, want)
		}
	}
	// A steady rate converges to itself.
	for i := 2; i < 2000; i++ {
		l.update(t0.Add(time.Duration(i)*10*time.Second), [numLoads]int64{loadPublishReceived: int64(600 * i)})
	}
	for w := range loadWindows {
		if got := l.avg[loadPublishReceived][w]; math.Abs(got-3600) > 0.01 {
			t.Errorf("%s after a steady rate: %v, want 3600", loadWindows[w].name, got)
		}
	}
}
