package store

import (
	"slices"
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds, in seconds, of the buckets of
// Stats.CommitLatency: from 100 µs (a transaction without fsync on a fast
// disk) to 2.5 s (a disk that stalls).
var latencyBounds = [...]float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// Histogram is a distribution of durations. Counts[i] is the number of
// observations at most Bounds[i] seconds and above Bounds[i-1]; the last
// element, Counts[len(Bounds)], counts those above every bound. Sum is
// their total in seconds.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
}

// Count is the number of observations.
func (h Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// latency records the duration of each transaction. Only the committer
// writes it; Stats reads it from any goroutine.
type latency struct {
	counts [len(latencyBounds) + 1]atomic.Uint64
	sumNs  atomic.Int64
}

func (l *latency) observe(d time.Duration) {
	sec := d.Seconds()
	i := 0
	for i < len(latencyBounds) && sec > latencyBounds[i] {
		i++
	}
	l.counts[i].Add(1)
	l.sumNs.Add(int64(d))
}

func (l *latency) snapshot() Histogram {
	h := Histogram{Bounds: slices.Clone(latencyBounds[:]), Counts: make([]uint64, len(l.counts))}
	for i := range l.counts {
		h.Counts[i] = l.counts[i].Load()
	}
	h.Sum = time.Duration(l.sumNs.Load()).Seconds()
	return h
}
