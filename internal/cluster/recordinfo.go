package cluster

import (
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// RecordInfo describes one record of the durable message stream, for a
// tool that reads the stream of a stopped cluster back
// (scripts/killseries/streamdump): its message ID, the node that wrote
// it, and its messages in order.
type RecordInfo struct {
	ID       string
	Origin   string
	Messages []RecordMessage
}

// RecordMessage is one message of a record: its stream ID
// (origin/sequence), topic, payload, publisher and when it was published.
type RecordMessage struct {
	Ref     string
	Topic   string
	Payload []byte
	From    string
	Sent    time.Time
}

// DescribeRecord decodes a record of the durable stream (a batch record,
// or a single record of an earlier build) from its subject, headers and
// data, as stored.
func DescribeRecord(subject string, h nats.Header, data []byte) (RecordInfo, error) {
	ri := RecordInfo{ID: h.Get(nats.MsgIdHdr), Origin: h.Get(hdrOrigin)}
	if subject == batchSubject {
		entries, err := decodeBatch(data)
		if err != nil {
			return ri, err
		}
		for i := range entries {
			e := &entries[i]
			m, err := e.message()
			if err != nil {
				return ri, fmt.Errorf("message %d: %w", i, err)
			}
			ri.Messages = append(ri.Messages, RecordMessage{Ref: msgID(ri.Origin, e.seq), Topic: m.Topic, Payload: m.Payload,
				From: string(e.from), Sent: time.Unix(0, e.sent)})
		}
		return ri, nil
	}
	seq, err := strconv.ParseUint(h.Get(hdrSeq), 10, 64)
	if err != nil {
		return ri, fmt.Errorf("single record without a sequence: %w", err)
	}
	sent, err := strconv.ParseInt(h.Get(hdrSent), 10, 64)
	if err != nil {
		return ri, fmt.Errorf("single record without a time: %w", err)
	}
	from := h.Get(hdrFrom)
	m, err := decodeMessage(data, from, time.Unix(0, sent))
	if err != nil {
		return ri, err
	}
	ri.Messages = []RecordMessage{{Ref: msgID(ri.Origin, seq), Topic: m.Topic, Payload: m.Payload, From: from, Sent: time.Unix(0, sent)}}
	return ri, nil
}
