package cluster

import (
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkReplayAdd measures what a claim's replay spends per record
// of the durable stream it reads (replaySet.add): full batch records of
// 256 messages on 1,000 device topics, of which the session's one
// filter (without wildcards, or with one) matches one topic. In a storm
// of claims after a node died, every claim reads every record written
// since the dead node's floor, so this is paid once per claim per
// record.
func BenchmarkReplayAdd(b *testing.B) {
	for _, filter := range []string{"dev/7/telemetry", "dev/7/+"} {
		b.Run(filter, func(b *testing.B) { benchmarkReplayAdd(b, filter) })
	}
}

func benchmarkReplayAdd(b *testing.B, filter string) {
	const records, perRecord, topics = 64, maxBatchMsgs, 1000
	msgs := make([]*jetstream.RawStreamMsg, records)
	payload := string(make([]byte, 64))
	seq := uint64(0)
	for r := range records {
		fwd := make([]*fwdMsg, perRecord)
		for i := range fwd {
			seq++
			fwd[i] = fwdOf(b, seq, "dev/"+strconv.Itoa(int(seq)%topics)+"/telemetry", payload, "device-"+strconv.Itoa(int(seq)%topics))
		}
		m := batchRecord("n2/run", fwd)
		msgs[r] = &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: uint64(r + 1), Header: nats.Header(m.Header), Data: m.Data}
	}
	b.ReportAllocs()
	b.ResetTimer()
	found := 0
	for range b.N {
		rs := &replaySet{id: "c", self: "n1/run", have: map[string]bool{}, reached: map[string]bool{}, room: 1 << 30, roomBytes: -1}
		rs.setFilters([]string{filter})
		for _, m := range msgs {
			rs.add(m, 1<<62)
		}
		found = len(rs.msgs)
	}
	b.StopTimer()
	if want := records * perRecord / topics; found < want {
		b.Fatalf("found %d messages, want at least %d", found, want)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*records), "ns/record")
}
