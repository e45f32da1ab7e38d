package store

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: the record decoder never panics or over-allocates on
// any plaintext, and what it accepts encodes back to the same bytes
// (canonical) and decodes to the same record. Seeds: every record type
// (testdata/fuzz/FuzzDecodeRecord holds a few hand-made ones).
func FuzzDecodeRecord(f *testing.F) {
	s := &Store{}
	s.nextID.Store(100)
	sess, msg, d, ret, will := sample(s)
	for _, r := range []any{sess, msg, d, ret, will, &inbound{ClientID: "c", PacketID: 1}, &state{Counter: 3, Records: 2, MaxID: 9},
		&Session{}, &Message{}, &Delivery{}, &Retained{}, &Will{}, samplePublisher(), &Publisher{},
		&Retained{pubKey: make([]byte, idLen)}, &Will{pubKey: make([]byte, idLen)}, sampleTicketKeys("l"), &TicketKeys{}, sampleBan("0a")} {
		f.Add(encodeRecord(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		b2 := encodeRecord(r)
		r2, err := decodeRecord(b2)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !bytes.Equal(encodeRecord(r2), b2) {
			t.Fatalf("decode → encode → decode changed the record")
		}
	})
}

func TestDecodeRecordRejects(t *testing.T) {
	s := &Store{}
	sess, _, _, _, _ := sample(s)
	good := encodeRecord(sess)
	for name, b := range map[string][]byte{
		"empty":         nil,
		"unknown tag":   {99},
		"truncated":     good[:len(good)-1],
		"trailing":      append(bytes.Clone(good), 0),
		"huge length":   {tagInbound, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"bad boolean":   {tagSession, 0, 0, 2},
		"bad qos":       append([]byte{tagMessage, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, 3),
		"huge list":     {tagDelivery, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0xff, 0xff, 0x03},
		"bad delivery":  append(encodeRecord(&Delivery{})[:len(encodeRecord(&Delivery{}))-6], 9, 0, 0, 0, 0, 0),
		"bad props tag": {tagRetained, 0, 0, 0, 5},
		"short pub key": append(encodeRecord(&Retained{})[:len(encodeRecord(&Retained{}))-1], 3, 1, 2, 3),
		"attr order":    {tagPublisher, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 'b', 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"empty cert":    append(encodeRecord(&Publisher{Certs: [][]byte{{1}}})[:len(encodeRecord(&Publisher{Certs: [][]byte{{1}}}))-2], 0),
		"short tkey":    append([]byte{tagTicketKeys, 1, 'l', 1}, make([]byte, 31)...),
	} {
		if _, err := decodeRecord(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzParseHeader: the unsealed header parser never panics, and what it
// accepts marshals back to the same bytes.
func FuzzParseHeader(f *testing.F) {
	h := &header{Passphrase: true, WrappedDEK: bytes.Repeat([]byte{1}, 60)}
	f.Add(h.marshal())
	f.Add([]byte(headerMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			return
		}
		if h2, err := parseHeader(h.marshal()); err != nil || !bytes.Equal(h2.marshal(), h.marshal()) {
			t.Fatalf("header does not round-trip: %v", err)
		}
	})
}
