package packet_test

import (
	"bytes"
	"testing"

	paho5 "github.com/eclipse/paho.golang/packets"
	paho3 "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

// pahoLimits lists table cases whose packets the Eclipse Paho packet
// libraries cannot carry through a read and write, with the reason; they
// are skipped, not failed.
var pahoLimits = map[string]string{
	// paho.golang keeps one Subscription Identifier per packet.
	"PUBLISH 5.0 all properties": "paho.golang keeps only one Subscription Identifier",
	// paho.golang writes only Will Delay and User Properties of a will.
	"CONNECT 5.0 will with all will properties": "paho.golang drops most will properties",
}

// TestInteropPaho checks the codec against two independent MQTT
// implementations: every valid packet of the table, encoded by Append, is
// read by Paho (paho.golang for 5.0, paho.mqtt.golang for 3.1 and 3.1.1),
// written back by Paho, and decoded by Decode to the same packet.
func TestInteropPaho(t *testing.T) {
	for _, c := range packettest.Cases {
		if c.Err != nil {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			if why, ok := pahoLimits[c.Name]; ok {
				t.Skip(why)
			}
			v := encodeVersion(c.Packet, c.Version)
			raw, err := packet.Append(nil, c.Packet, v)
			if err != nil {
				t.Fatal(err)
			}
			var back bytes.Buffer
			if v == packet.V5 {
				cp, err := paho5.ReadPacket(bytes.NewReader(raw))
				if err != nil {
					t.Fatalf("paho.golang cannot read % x: %v", raw, err)
				}
				if _, err := cp.WriteTo(&back); err != nil {
					t.Fatalf("paho.golang write: %v", err)
				}
			} else {
				cp, err := paho3.ReadPacket(bytes.NewReader(raw))
				if err != nil {
					t.Fatalf("paho.mqtt.golang cannot read % x: %v", raw, err)
				}
				if err := cp.Write(&back); err != nil {
					t.Fatalf("paho.mqtt.golang write: %v", err)
				}
			}
			p, n, err := packet.Decode(back.Bytes(), c.Version, 0)
			if err != nil {
				t.Fatalf("Paho wrote % x, Decode: %v (we wrote % x)", back.Bytes(), err, raw)
			}
			if n != back.Len() {
				t.Fatalf("Decode used %d of %d bytes", n, back.Len())
			}
			checkPacket(t, p, c.Packet)
		})
	}
}
