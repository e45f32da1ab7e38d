package bench

import (
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram records durations in a log-linear layout: values below
// histSub nanoseconds have one bucket each, and every power of two above
// is split into histSub/2 equal buckets, so a recorded value is known to
// within 1/64 (1.6 %) of itself. It covers 1 ns to about 9 hours.
//
// The zero value is empty and ready; Record and the readers are safe for
// concurrent use (counts are atomic, so a reader running during Record
// sees a consistent-enough snapshot for a progress line).
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; wraps after 584 years of latency
	max    atomic.Int64
	min    atomic.Int64 // 0 means unset; Record stores v+1
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // 128
	histHalf    = histSub / 2
	histMaxExp  = 45 - histSubBits // values up to 2^45 ns
	histBuckets = histSub + histMaxExp*histHalf
)

func histIndex(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < histSub {
		return int(u)
	}
	exp := bits.Len64(u) - histSubBits // >= 1
	if exp > histMaxExp {
		return histBuckets - 1
	}
	return histSub + (exp-1)*histHalf + int(u>>uint(exp)) - histHalf
}

// histUpper returns the largest value that falls in bucket i.
func histUpper(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	i -= histSub
	exp := i/histHalf + 1
	m := int64(i%histHalf + histHalf)
	return (m+1)<<uint(exp) - 1
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.min.Load()
		if (m != 0 && v+1 >= m) || h.min.CompareAndSwap(m, v+1) {
			break
		}
	}
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max returns the largest recorded value exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Min returns the smallest recorded value exactly (0 when empty).
func (h *Histogram) Min() time.Duration {
	if m := h.min.Load(); m > 0 {
		return time.Duration(m - 1)
	}
	return 0
}

// Mean returns the average of the recorded values.
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value below or at which a fraction q (0..1) of the
// recorded values fall, as the upper bound of its bucket, capped at Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return min(time.Duration(histUpper(i)), h.Max())
		}
	}
	return h.Max()
}

// Merge adds the counts of o to h. o should not be recorded to meanwhile.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	h.sum.Add(o.sum.Load())
	if m := o.max.Load(); m > h.max.Load() {
		h.max.Store(m)
	}
	if m := o.min.Load(); m != 0 && (h.min.Load() == 0 || m < h.min.Load()) {
		h.min.Store(m)
	}
}

// Summary returns the usual percentiles of h.
func (h *Histogram) Summary() LatencySummary {
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return LatencySummary{
		Count: h.Count(),
		MinUs: us(h.Min()), MeanUs: us(h.Mean()),
		P50Us: us(h.Quantile(0.50)), P90Us: us(h.Quantile(0.90)),
		P99Us: us(h.Quantile(0.99)), P999Us: us(h.Quantile(0.999)),
		MaxUs: us(h.Max()),
	}
}

// Buckets returns the non-empty buckets of h merged into at most n bins of
// equal width on a logarithmic scale, for charts.
func (h *Histogram) Buckets(n int) []Bucket {
	var raw []Bucket
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			raw = append(raw, Bucket{UpperUs: float64(histUpper(i)) / 1e3, Count: c})
		}
	}
	if len(raw) <= n || n < 2 {
		return raw
	}
	lo, hi := math.Log(max(raw[0].UpperUs, 0.001)), math.Log(raw[len(raw)-1].UpperUs)
	step := (hi - lo) / float64(n)
	out := make([]Bucket, 0, n)
	for _, b := range raw {
		k := int((math.Log(max(b.UpperUs, 0.001)) - lo) / step)
		edge := math.Exp(lo + float64(k+1)*step)
		if len(out) > 0 && out[len(out)-1].UpperUs >= b.UpperUs {
			out[len(out)-1].Count += b.Count
			continue
		}
		out = append(out, Bucket{UpperUs: max(edge, b.UpperUs), Count: b.Count})
	}
	return out
}

// LatencySummary holds percentiles in microseconds.
type LatencySummary struct {
	Count  uint64  `json:"count"`
	MinUs  float64 `json:"min_us"`
	MeanUs float64 `json:"mean_us"`
	P50Us  float64 `json:"p50_us"`
	P90Us  float64 `json:"p90_us"`
	P99Us  float64 `json:"p99_us"`
	P999Us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
}

// Bucket is one bar of a latency histogram: Count values at or below
// UpperUs microseconds (and above the previous bucket's bound).
type Bucket struct {
	UpperUs float64 `json:"upper_us"`
	Count   uint64  `json:"count"`
}

// HistData is the exact content of a Histogram, kept in a Result so that
// the results of several rounds can be merged (MergeResults) with the
// same precision as one run.
type HistData struct {
	// Buckets holds [bucket index, count] for every non-empty bucket.
	Buckets [][2]uint64 `json:"buckets"`
	SumNs   uint64      `json:"sum_ns"`
	MinNs   int64       `json:"min_ns"`
	MaxNs   int64       `json:"max_ns"`
}

// Data returns the exact content of h, or nil when h is empty.
func (h *Histogram) Data() *HistData {
	if h.Count() == 0 {
		return nil
	}
	d := &HistData{SumNs: h.sum.Load(), MinNs: int64(h.Min()), MaxNs: h.max.Load()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			d.Buckets = append(d.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return d
}

// AddData adds the content of d (from Data) to h. Buckets outside h's
// layout are refused.
func (h *Histogram) AddData(d *HistData) error {
	if d == nil {
		return nil
	}
	for _, b := range d.Buckets {
		if b[0] >= histBuckets {
			return fmt.Errorf("bench: histogram bucket %d out of range", b[0])
		}
	}
	for _, b := range d.Buckets {
		h.counts[b[0]].Add(b[1])
		h.total.Add(b[1])
	}
	h.sum.Add(d.SumNs)
	if d.MaxNs > h.max.Load() {
		h.max.Store(d.MaxNs)
	}
	if m := h.min.Load(); d.MinNs >= 0 && (m == 0 || d.MinNs+1 < m) {
		h.min.Store(d.MinNs + 1)
	}
	return nil
}
