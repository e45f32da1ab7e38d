package broker

import (
	"strconv"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// TestConformanceAckSizeV5 checks SUBACK and UNSUBACK against the
// client's Maximum Packet Size [MQTT-3.1.2-24]: the Reason String is
// dropped first, and an acknowledgement still too large is not sent
// while its subscriptions are made.
func TestConformanceAckSizeV5(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}})
	t.Run("MQTT-3.9.2 SUBACK refusal carries a Reason String", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("ack-reason"))
		ack := subscribe(t, c, 1, packet.Subscription{Filter: "deny/x"})
		if ack.ReasonCodes[0] != packet.NotAuthorized || !ack.Properties.Has(packet.PropReasonString) {
			t.Fatalf("SUBACK %#v", ack)
		}
	})
	t.Run("MQTT-3.1.2-24 MQTT-3.9.2-1 SUBACK drops its Reason String beyond the client's Maximum Packet Size", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("ack-small", true, func(p *packet.Properties) { p.SetMaximumPacketSize(16) }))
		ack := subscribe(t, c, 1, packet.Subscription{Filter: "deny/x"}, packet.Subscription{Filter: "ok/x"})
		if ack.Properties.Has(packet.PropReasonString) || len(ack.ReasonCodes) != 2 || ack.ReasonCodes[0] != packet.NotAuthorized {
			t.Fatalf("SUBACK %#v", ack)
		}
	})
	t.Run("MQTT-3.1.2-24 SUBACK and UNSUBACK too large even without properties are not sent", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("ack-tiny", true, func(p *packet.Properties) { p.SetMaximumPacketSize(16) }))
		subs := make([]packet.Subscription, 20)
		filters := make([]string, 20)
		for i := range subs {
			filters[i] = "t/" + strconv.Itoa(i)
			subs[i] = packet.Subscription{Filter: filters[i]}
		}
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: subs})
		c.send(&packet.Pingreq{})
		if p := c.recv(); p.Type() != packet.PINGRESP {
			t.Fatalf("got %s, want PINGRESP (no SUBACK over 16 bytes)", p.Type())
		}
		// The subscriptions were made.
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("ack-tiny-pub"))
		publishAcked(t, pub, 1, &packet.Publish{Topic: "t/7", Payload: []byte("m")})
		if p := recvPublish(t, c); p.Topic != "t/7" {
			t.Fatalf("got %q", p.Topic)
		}
		c.send(&packet.Unsubscribe{PacketID: 2, Filters: filters})
		c.send(&packet.Pingreq{})
		if p := c.recv(); p.Type() != packet.PINGRESP {
			t.Fatalf("got %s, want PINGRESP (no UNSUBACK over 16 bytes)", p.Type())
		}
	})
}
