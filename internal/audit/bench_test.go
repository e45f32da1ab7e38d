package audit

import (
	"fmt"
	"testing"
	"time"
)

func benchEvent() Event {
	return Event{Type: TypeAuthzDeny, Fields: []Field{
		String("client_id", "sensor-0042"), String("username", "sensor-0042"),
		String("addr", "10.1.2.3:51234"), String("topic", "plant/3/line/7/temp"),
		String("action", "publish"), String("reason", "no rule matches"),
	}}
}

// BenchmarkRecord measures the cost of Record on the publish path, from
// every core at once. Events the writer cannot keep up with are dropped
// (reported as dropped/op); Record never waits for the writer.
func BenchmarkRecord(b *testing.B) {
	l, err := Open(Config{Dir: b.TempDir(), QueueSize: DefaultQueueSize})
	if err != nil {
		b.Fatal(err)
	}
	ev := benchEvent()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Record(ev)
		}
	})
	b.StopTimer()
	s := l.Stats()
	b.ReportMetric(float64(s.Dropped)/float64(b.N), "dropped/op")
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkWriter measures the writer's sustained rate: encoding, hashing
// and writing to the file, with a signed and synced checkpoint every 1,000
// entries (the default) or every 100,000 (showing the cost without fsync).
func BenchmarkWriter(b *testing.B) {
	for _, every := range []int{DefaultCheckpointEvery, 100000} {
		b.Run(fmt.Sprintf("checkpoint=%d", every), func(b *testing.B) { benchWriter(b, every) })
	}
}

func benchWriter(b *testing.B, every int) {
	l, err := Open(Config{Dir: b.TempDir(), CheckpointEvery: every})
	if err != nil {
		b.Fatal(err)
	}
	q := queued{ev: benchEvent(), t: time.Now()}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	err = l.do(func() error {
		for range b.N {
			l.write(q)
		}
		return l.flush()
	})
	el := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "entries/s")
	b.ReportMetric(float64(l.Stats().Bytes)/float64(b.N), "bytes/entry")
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}
