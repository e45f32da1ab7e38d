package cluster

import (
	"reflect"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

func testMessage() *broker.Message {
	p := &packet.Publish{Topic: "a/b", Payload: []byte("x"), QoS: 2, PacketID: 1}
	p.Properties.SetContentType("text/plain")
	m := broker.NewMessage(p, "pub-1", time.Unix(1e9, 5).UTC())
	m.Expires = time.Unix(2e9, 0).UTC()
	return m
}

// TestSessionRecordsRoundTrip: each record kind decodes to what was
// encoded.
func TestSessionRecordsRoundTrip(t *testing.T) {
	t.Parallel()
	ss := &broker.StoredSession{ClientID: "c/1", Owner: "user:alice", OwnerVerified: true, Version: 5, Expiry: time.Hour,
		ExpiresAt: time.Unix(1e9, 0).UTC(), Created: time.Unix(9e8, 0).UTC(),
		Subscriptions: []broker.StoredSubscription{{Filter: "a/+", QoS: 1, NoLocal: true, ID: 7}, {Filter: "$share/g/b/#", QoS: 2, RetainHandling: 2}}}
	b, err := encodeRecord(kindSession, sessionRecordOf(ss, "n1/ab", "n1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeSession(b)
	if err != nil || rec.Home != "n1/ab" || rec.Node != "n1" {
		t.Fatalf("session: %+v %v", rec, err)
	}
	if got := rec.stored("c/1"); !reflect.DeepEqual(got, ss) {
		t.Fatalf("session:\n got %+v\nwant %+v", got, ss)
	}

	m := testMessage()
	d := &broker.StoredDelivery{ClientID: "c/1", Seq: 42, MsgID: 41, QoS: 2, Retain: true, SubIDs: []uint32{7},
		State: broker.DeliveryReleased, PacketID: 9, Dup: true, ShareGroup: "g", ShareFilter: "b/#"}
	b, err = encodeDelivery(d, m, "n2/cd/3")
	if err != nil {
		t.Fatal(err)
	}
	d2, m2, ref, err := decodeDelivery(b, "c/1")
	if err != nil || ref != "n2/cd/3" || !reflect.DeepEqual(d2, d) {
		t.Fatalf("delivery: %+v %q %v", d2, ref, err)
	}
	if m2.Topic != m.Topic || string(m2.Payload) != "x" || m2.QoS != 2 || m2.From != "pub-1" || !m2.Created.Equal(m.Created) ||
		!m2.Expires.Equal(m.Expires) || m2.Props == nil || m2.Props.ContentType != "text/plain" {
		t.Fatalf("delivery message: %+v", m2)
	}

	w := &broker.StoredWill{ClientID: "c/1", FireAt: time.Unix(1e9, 0).UTC(), Owner: "user:alice", Message: m,
		Publisher: &broker.StoredPublisher{ClientID: "c/1", Username: "alice", Listener: "tls"}}
	b, err = encodeWill(w)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := decodeWill(b, "c/1")
	if err != nil || !w2.FireAt.Equal(w.FireAt) || w2.Owner != w.Owner || w2.Publisher == nil || w2.Publisher.Username != "alice" ||
		w2.Message.Topic != "a/b" {
		t.Fatalf("will: %+v %v", w2, err)
	}

	// The live will of a clean session's connection names its node.
	lw := &broker.StoredWill{ClientID: "c/1", Owner: "user:alice", Message: m, Live: true, Clean: true, Delay: 5 * time.Second,
		Publisher: &broker.StoredPublisher{ClientID: "c/1", Username: "alice", Listener: "tls"}}
	b, err = encodeWillOf(lw, "n3", "n3/ab")
	if err != nil {
		t.Fatal(err)
	}
	lw2, r, err := decodeWillRecord(b, "c/1")
	if err != nil || !lw2.Live || lw2.Delay != 5*time.Second || !lw2.FireAt.IsZero() || r.Node != "n3" || r.Home != "n3/ab" ||
		lw2.Publisher == nil || lw2.Message.Topic != "a/b" {
		t.Fatalf("live will: %+v %+v %v", lw2, r, err)
	}
}

// FuzzDecodeSessionRecord: records from the cluster's store are decoded
// strictly; one that decodes encodes to a record that decodes the same.
func FuzzDecodeSessionRecord(f *testing.F) {
	m := testMessage()
	for _, mk := range []func() ([]byte, error){
		func() ([]byte, error) {
			return encodeRecord(kindSession, &sessionRecord{Home: "n1/00", Node: "n1", Expiry: -1, Subs: []subRecord{{Filter: "a/#", QoS: 1}}}, nil)
		},
		func() ([]byte, error) {
			return encodeDelivery(&broker.StoredDelivery{Seq: 1, MsgID: 1, QoS: 1}, m, "n1/00/1")
		},
		func() ([]byte, error) {
			return encodeWill(&broker.StoredWill{FireAt: time.Unix(1e9, 0), Message: m})
		},
		func() ([]byte, error) {
			return encodeWillOf(&broker.StoredWill{Message: m, Live: true, Delay: time.Minute}, "n3", "n3/00")
		},
	} {
		b, err := mk()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1, 'd', 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, msg, ref, err := decodeDelivery(b, "c"); err == nil {
			again, err := encodeDelivery(d, msg, ref)
			if err != nil {
				t.Fatalf("re-encoding a decoded delivery: %v", err)
			}
			d2, msg2, ref2, err := decodeDelivery(again, "c")
			if err != nil || !reflect.DeepEqual(d, d2) || ref != ref2 || msg.Topic != msg2.Topic || string(msg.Payload) != string(msg2.Payload) {
				t.Fatalf("decode → encode → decode changed the delivery: %v", err)
			}
		}
		if rec, err := decodeSession(b); err == nil {
			again, err := encodeRecord(kindSession, rec, nil)
			if err != nil {
				t.Fatal(err)
			}
			rec2, err := decodeSession(again)
			if err != nil || !reflect.DeepEqual(rec.stored("c"), rec2.stored("c")) {
				t.Fatalf("decode → encode → decode changed the session: %v", err)
			}
		}
		if w, r, err := decodeWillRecord(b, "c"); err == nil {
			again, err := encodeWillOf(w, r.Node, r.Home)
			if err != nil {
				t.Fatalf("re-encoding a decoded will: %v", err)
			}
			w2, r2, err := decodeWillRecord(again, "c")
			if err != nil || w2.Live != w.Live || w2.Delay != w.Delay || r2.Node != r.Node || r2.Home != r.Home || w2.Message.Topic != w.Message.Topic {
				t.Fatalf("decode → encode → decode changed the will: %v", err)
			}
		}
	})
}
