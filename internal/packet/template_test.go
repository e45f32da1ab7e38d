package packet_test

import (
	"bytes"
	"testing"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

// checkTemplate checks AppendPublishTemplate and PatchPublish on p against
// Append in every version: the template is Append's encoding, and a copy
// patched with any identifier and DUP flag is Append's encoding of the
// packet with that identifier and flag.
func checkTemplate(t *testing.T, p *packet.Publish) {
	t.Helper()
	for _, v := range []packet.Version{packet.V31, packet.V311, packet.V5} {
		want, wantErr := packet.Append([]byte("prefix"), p, v)
		got, idAt, err := packet.AppendPublishTemplate([]byte("prefix"), p, v)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("%s: AppendPublishTemplate = % x, %v; Append = % x, %v", v, got, err, want, wantErr)
		}
		if err != nil {
			continue
		}
		if p.QoS == 0 {
			if idAt != 0 {
				t.Fatalf("%s: QoS 0 template has an identifier at %d", v, idAt)
			}
			continue
		}
		tmpl := got[len("prefix"):]
		for _, id := range []uint16{1, 0x00FF, 0x0100, 0x1234, 0xFFFF} {
			for _, dup := range []bool{false, true} {
				q := *p
				q.PacketID, q.Dup = id, dup
				want, err := packet.Append(nil, &q, v)
				if err != nil {
					t.Fatalf("%s: Append with identifier %d, DUP %v: %v", v, id, dup, err)
				}
				cp := bytes.Clone(tmpl)
				packet.PatchPublish(cp, idAt-len("prefix"), dup, id)
				if !bytes.Equal(cp, want) {
					t.Fatalf("%s: patched template with identifier %d, DUP %v:\n% x\nAppend:\n% x", v, id, dup, cp, want)
				}
			}
		}
	}
}

func TestPublishTemplateTable(t *testing.T) {
	n := 0
	for _, c := range packettest.Cases {
		p, ok := c.Packet.(*packet.Publish)
		if !ok || c.Err != nil {
			continue
		}
		n++
		t.Run(c.Name, func(t *testing.T) { checkTemplate(t, p) })
	}
	if n == 0 {
		t.Fatal("no PUBLISH in the shared table")
	}
}

// TestPublishTemplateLengths covers every length of the remaining-length
// field, which moves the identifier.
func TestPublishTemplateLengths(t *testing.T) {
	for _, size := range []int{0, 100, 127 - 9, 128, 16383 - 9, 16384, 2097151 - 9, 2097152} {
		for qos := byte(0); qos <= 2; qos++ {
			p := &packet.Publish{Topic: "a/b", QoS: qos, Payload: make([]byte, size)}
			if qos > 0 {
				p.PacketID = 7
			}
			p.Properties.SetMessageExpiry(60)
			p.Properties.SubscriptionIDs = []uint32{1, 268435455}
			checkTemplate(t, p)
		}
	}
}

// FuzzPublishTemplate checks the template against Append on every PUBLISH
// the decoder accepts.
func FuzzPublishTemplate(f *testing.F) {
	for _, c := range packettest.Cases {
		if _, ok := c.Packet.(*packet.Publish); ok {
			f.Add(c.Raw, byte(c.Version))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, ver byte) {
		p, _, err := packet.Decode(data, fuzzVersion(ver), 0)
		if pub, ok := p.(*packet.Publish); ok && err == nil {
			checkTemplate(t, pub)
		}
	})
}
