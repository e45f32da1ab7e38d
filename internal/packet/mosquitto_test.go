package packet_test

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/packet"
)

// startMosquitto runs a mosquitto broker on a 127.0.0.1 port and returns
// its address. The test is skipped when mosquitto is absent.
func startMosquitto(t *testing.T) string {
	t.Helper()
	m := testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", ports[0])
	})
	return m.Addr(0)
}

// mqttConn is one client connection speaking through the codec.
type mqttConn struct {
	t *testing.T
	c net.Conn
	r *packet.Reader
	w *packet.Writer
}

func dialMQTT(t *testing.T, addr string, v packet.Version, id string) (*mqttConn, *packet.Connack) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	m := &mqttConn{t: t, c: c, r: packet.NewReader(c, 1<<20), w: packet.NewWriter(c)}
	m.r.SetVersion(v)
	m.w.SetVersion(v)
	conn := &packet.Connect{Version: v, CleanStart: true, KeepAlive: 30, ClientID: id}
	if v == packet.V5 {
		conn.Properties.SetReceiveMaximum(10)
		conn.Properties.SetMaximumPacketSize(1 << 20)
		conn.Properties.SetRequestProblemInfo(1)
		conn.Properties.AddUser("client", "moat")
	}
	m.send(conn)
	ack := m.expect(packet.CONNACK).(*packet.Connack)
	if ack.ReasonCode != packet.Success {
		t.Fatalf("CONNACK %s", ack.ReasonCode)
	}
	return m, ack
}

func (m *mqttConn) send(p packet.Packet) {
	m.t.Helper()
	if err := m.w.WritePacket(p); err != nil {
		m.t.Fatalf("write %s: %v", p.Type(), err)
	}
}

func (m *mqttConn) expect(t packet.Type) packet.Packet {
	m.t.Helper()
	p, err := m.r.ReadPacket()
	if err != nil {
		m.t.Fatalf("waiting for %s: %v", t, err)
	}
	if p.Type() != t {
		m.t.Fatalf("got %s %#v, want %s", p.Type(), p, t)
	}
	return p
}

// TestInteropMosquitto drives a real mosquitto broker with packets encoded
// by Append and decodes everything it sends with the Reader, for MQTT 3.1,
// 3.1.1 and 5.0: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 0, 1 and
// 2 with their acknowledgements in both directions, UNSUBSCRIBE/UNSUBACK,
// PINGREQ/PINGRESP and DISCONNECT.
func TestInteropMosquitto(t *testing.T) {
	addr := startMosquitto(t)
	for _, v := range []packet.Version{packet.V31, packet.V311, packet.V5} {
		t.Run("MQTT "+v.String(), func(t *testing.T) {
			sub, _ := dialMQTT(t, addr, v, "moat-sub-"+v.String())
			pub, _ := dialMQTT(t, addr, v, "moat-pub-"+v.String())
			filter := "moat/" + v.String() + "/#"
			s := &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: 2}}}
			if v == packet.V5 {
				s.Properties.AddSubscriptionID(5)
			}
			sub.send(s)
			suback := sub.expect(packet.SUBACK).(*packet.Suback)
			if len(suback.ReasonCodes) != 1 || suback.ReasonCodes[0] != packet.GrantedQoS2 {
				t.Fatalf("SUBACK %v", suback.ReasonCodes)
			}

			topic := "moat/" + v.String() + "/a"
			for qos := byte(0); qos <= 2; qos++ {
				p := &packet.Publish{QoS: qos, Topic: topic, Payload: []byte(fmt.Sprintf("payload %d", qos))}
				if qos > 0 {
					p.PacketID = uint16(10 + qos)
				}
				if v == packet.V5 {
					p.Properties.SetContentType("text/plain")
					p.Properties.SetResponseTopic("moat/reply")
					p.Properties.SetCorrelationData([]byte{1, 2, 3})
					p.Properties.SetMessageExpiry(300)
					p.Properties.SetPayloadFormat(1)
					p.Properties.AddUser("k", "v")
				}
				pub.send(p)
				switch qos {
				case 1:
					if a := pub.expect(packet.PUBACK).(*packet.Puback); a.PacketID != p.PacketID {
						t.Fatalf("PUBACK for %d", a.PacketID)
					}
				case 2:
					if a := pub.expect(packet.PUBREC).(*packet.Pubrec); a.PacketID != p.PacketID {
						t.Fatalf("PUBREC for %d", a.PacketID)
					}
					pub.send(&packet.Pubrel{PacketID: p.PacketID})
					if a := pub.expect(packet.PUBCOMP).(*packet.Pubcomp); a.PacketID != p.PacketID {
						t.Fatalf("PUBCOMP for %d", a.PacketID)
					}
				}

				got := sub.expect(packet.PUBLISH).(*packet.Publish)
				if got.Topic != topic || !bytes.Equal(got.Payload, p.Payload) || got.QoS != qos {
					t.Fatalf("received %#v", got)
				}
				if v == packet.V5 {
					gp := &got.Properties
					if gp.ContentType != "text/plain" || gp.ResponseTopic != "moat/reply" ||
						!bytes.Equal(gp.CorrelationData, []byte{1, 2, 3}) || !gp.Has(packet.PropMessageExpiry) ||
						gp.PayloadFormat != 1 || len(gp.User) != 1 || gp.User[0] != (packet.UserProperty{Key: "k", Value: "v"}) ||
						len(gp.SubscriptionIDs) != 1 || gp.SubscriptionIDs[0] != 5 {
						t.Fatalf("forwarded properties %#v", *gp)
					}
				}
				switch qos {
				case 1:
					sub.send(&packet.Puback{PacketID: got.PacketID})
				case 2:
					sub.send(&packet.Pubrec{PacketID: got.PacketID})
					if r := sub.expect(packet.PUBREL).(*packet.Pubrel); r.PacketID != got.PacketID {
						t.Fatalf("PUBREL for %d", r.PacketID)
					}
					sub.send(&packet.Pubcomp{PacketID: got.PacketID})
				}
			}

			sub.send(&packet.Unsubscribe{PacketID: 2, Filters: []string{filter}})
			unsuback := sub.expect(packet.UNSUBACK).(*packet.Unsuback)
			if unsuback.PacketID != 2 || (v == packet.V5 && (len(unsuback.ReasonCodes) != 1 || unsuback.ReasonCodes[0] != packet.Success)) {
				t.Fatalf("UNSUBACK %#v", unsuback)
			}
			sub.send(&packet.Pingreq{})
			sub.expect(packet.PINGRESP)
			for _, m := range []*mqttConn{sub, pub} {
				m.send(&packet.Disconnect{})
				// The broker closes the connection after DISCONNECT.
				if p, err := m.r.ReadPacket(); err == nil {
					t.Fatalf("after DISCONNECT: %#v", p)
				}
			}
		})
	}
}
