package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Metric is one figure extracted from a Result for comparison.
type Metric struct {
	Name   string // stable identifier, used in targets
	Label  string
	Higher bool // true when a higher value is better
	Unit   string
	Get    func(*Result) (float64, bool)
}

// neutral names the figures shown for information only, with no best
// peer and no ratio: the open loop's accepted rate (neither higher nor
// lower is better) and the hypervisor's steal (no broker's doing).
var neutral = map[string]bool{"accepted_per_s": true, "steal_pct": true}

func brokerMetric(f func(*BrokerStats) float64) func(*Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		if r.Broker == nil {
			return 0, false
		}
		return f(r.Broker), true
	}
}

// Metrics lists the comparable figures: those of message scenarios first,
// then those of connection storms.
var Metrics = []Metric{
	{"delivered_per_s", "delivered msgs/s", true, "", func(r *Result) (float64, bool) {
		return r.Messages.DeliveredPerSecond, r.Scenario != string(Conn)
	}},
	// Open loop: what the broker took from the publishers in the window
	// (above the delivered rate, it queues).
	{"accepted_per_s", "accepted msgs/s (open loop)", true, "", func(r *Result) (float64, bool) {
		return r.Messages.AcceptedPerSecond, r.Params.OfferedPerSecond > 0
	}},
	{"loss_pct", "lost %", false, "%", func(r *Result) (float64, bool) {
		return 100 * r.Messages.LossRate, r.Messages.Expected >= 0 && r.Scenario != string(Conn)
	}},
	{"latency_p50_ms", "latency p50", false, "ms", func(r *Result) (float64, bool) {
		return r.Latency.P50Us / 1e3, r.Latency.Count > 0
	}},
	{"latency_p99_ms", "latency p99", false, "ms", func(r *Result) (float64, bool) {
		return r.Latency.P99Us / 1e3, r.Latency.Count > 0
	}},
	{"conn_success_pct", "auth/connect success %", true, "%", func(r *Result) (float64, bool) {
		return 100 * r.Connect.SuccessRate, r.Connect.Attempted > 0
	}},
	{"conn_per_s", "connections/s", true, "", func(r *Result) (float64, bool) {
		return r.Connect.PerSecond, r.Scenario == string(Conn)
	}},
	{"handshake_p99_ms", "handshake p99", false, "ms", func(r *Result) (float64, bool) {
		return r.Connect.Handshake.P99Us / 1e3, r.Scenario == string(Conn) && r.Connect.Handshake.Count > 0
	}},
	{"cpu_per_conn_ms", "broker CPU per connection", false, "ms", func(r *Result) (float64, bool) {
		if r.Broker == nil || r.Scenario != string(Conn) {
			return 0, false
		}
		return r.Broker.CPUPerConnectMs, true
	}},
	{"rss_per_conn_kib", "broker RSS per connection", false, "KiB", func(r *Result) (float64, bool) {
		if r.Broker == nil || r.Scenario != string(Conn) {
			return 0, false
		}
		return r.Broker.RSSPerConnKiB, true
	}},
	{"cpu_pct", "broker CPU (avg)", false, "%", func(r *Result) (float64, bool) {
		if r.Broker == nil || r.Scenario == string(Conn) {
			return 0, false
		}
		return r.Broker.CPUPercent, true
	}},
	{"cpu_per_msg_us", "broker CPU per delivered msg", false, "µs", func(r *Result) (float64, bool) {
		if r.Broker == nil || r.Scenario == string(Conn) || r.Broker.CPUPerMessageUs == 0 {
			return 0, false
		}
		return r.Broker.CPUPerMessageUs, true
	}},
	{"rss_peak_mib", "broker RSS (peak)", false, "MiB", brokerMetric(func(b *BrokerStats) float64 { return b.RSSPeakMiB })},
	// Not the broker's doing: the CPU time the hypervisor of a virtual
	// machine took away during the run, which decides latency tails.
	{"steal_pct", "machine: CPU stolen by the hypervisor", false, "%", func(r *Result) (float64, bool) {
		if r.Host == nil {
			return 0, false
		}
		return r.Host.StealPct, true
	}},
}

// Target is a requirement on the ratio first/second broker of one metric
// in one scenario, e.g. "c-p2p:delivered_per_s>=2".
type Target struct {
	Scenario, Metric string
	Op               string // ">=" or "<="
	Ratio            float64
}

// ParseTarget parses SCENARIO:METRIC>=RATIO or SCENARIO:METRIC<=RATIO.
func ParseTarget(s string) (Target, error) {
	id, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Target{}, fmt.Errorf("bench: target %q: want SCENARIO:METRIC>=RATIO", s)
	}
	for _, op := range []string{">=", "<="} {
		if m, v, ok := strings.Cut(rest, op); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return Target{}, fmt.Errorf("bench: target %q: %v", s, err)
			}
			if !slices.ContainsFunc(Metrics, func(x Metric) bool { return x.Name == m }) {
				return Target{}, fmt.Errorf("bench: target %q: unknown metric %q", s, m)
			}
			return Target{id, m, op, f}, nil
		}
	}
	return Target{}, fmt.Errorf("bench: target %q: want >= or <=", s)
}

// LoadResults reads every FILE named SCENARIO.BROKER.json in dir and
// returns them by scenario and broker.
func LoadResults(dir string) (map[string]map[string]*Result, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]*Result{}
	var errs []error
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".json")
		i := strings.LastIndexByte(base, '.')
		if i < 0 {
			continue
		}
		fh, err := os.Open(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, err := ReadResult(fh)
		fh.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		if out[base[:i]] == nil {
			out[base[:i]] = map[string]*Result{}
		}
		out[base[:i]][base[i+1:]] = r
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("bench: no SCENARIO.BROKER.json results in %s", dir))
	}
	return out, errors.Join(errs...)
}

func fmtVal(v float64) string {
	switch a := v; {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}

// bestPeer returns the index in vals of the best value of m among those
// present (ok), or -1 when none is.
func bestPeer(m Metric, vals []float64, ok []bool) int {
	best := -1
	for i, v := range vals {
		if !ok[i] {
			continue
		}
		if best < 0 || m.Higher && v > vals[best] || !m.Higher && v < vals[best] {
			best = i
		}
	}
	return best
}

// Compare writes a markdown table of every metric present in the first
// broker's results and at least one peer's, scenario by scenario. With one
// peer it gives the ratio first/peer; with several, every peer's value,
// the best peer per row and the ratio first/best. Further brokers (extra,
// e.g. a null forwarder) are shown as columns, outside the comparison.
// Targets apply to the ratio to the best peer (the only peer when there is
// one); it returns the number of targets missed.
func Compare(w io.Writer, results map[string]map[string]*Result, first string, peers, extra []string, targets []Target) int {
	ids := make([]string, 0, len(results))
	for id := range results {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	many := len(peers) > 1
	hdr := "| scenario | metric | " + first + " |"
	sep := "| --- | --- | ---: |"
	for _, p := range peers {
		hdr += " " + p + " |"
		sep += " ---: |"
	}
	if many {
		hdr += " best peer | " + first + "/best | target |"
		sep += " --- | ---: | --- |"
	} else {
		hdr += " " + first + "/" + strings.Join(peers, "") + " | target |"
		sep += " ---: | --- |"
	}
	for _, e := range extra {
		hdr += " " + e + " |"
		sep += " ---: |"
	}
	fmt.Fprintln(w, hdr)
	fmt.Fprintln(w, sep)
	missed := 0
	vals, oks := make([]float64, len(peers)), make([]bool, len(peers))
	for _, id := range ids {
		a := results[id][first]
		if a == nil {
			continue
		}
		for _, m := range Metrics {
			va, ok1 := m.Get(a)
			if !ok1 {
				continue
			}
			for i, p := range peers {
				vals[i], oks[i] = 0, false
				if r := results[id][p]; r != nil {
					vals[i], oks[i] = m.Get(r)
				}
			}
			bi := bestPeer(m, vals, oks)
			if bi < 0 {
				continue
			}
			vb := vals[bi]
			ratio, bestName := "–", peers[bi]
			if neutral[m.Name] {
				bestName = "–"
			} else if vb != 0 {
				ratio = fmt.Sprintf("%.2f×", va/vb)
			}
			tgt := ""
			for _, t := range targets {
				if t.Scenario != id || t.Metric != m.Name {
					continue
				}
				met := false
				if vb != 0 {
					switch t.Op {
					case ">=":
						met = va/vb >= t.Ratio
					case "<=":
						met = va/vb <= t.Ratio
					}
				} else {
					met = t.Op == ">=" && va > 0 || t.Op == "<=" && va == 0
				}
				mark := "met"
				if !met {
					mark = "**missed**"
					missed++
				}
				tgt = fmt.Sprintf("%s %g× %s", t.Op, t.Ratio, mark)
			}
			unit := ""
			if m.Unit != "" && m.Unit != "%" {
				unit = " (" + m.Unit + ")"
			}
			if m.Unit == "%" && !strings.HasSuffix(m.Label, "%") {
				unit = " (%)"
			}
			fmt.Fprintf(w, "| %s | %s%s | %s |", id, m.Label, unit, fmtVal(va))
			for i := range peers {
				cell := ""
				if oks[i] {
					cell = fmtVal(vals[i])
				}
				fmt.Fprintf(w, " %s |", cell)
			}
			if many {
				fmt.Fprintf(w, " %s |", bestName)
			}
			fmt.Fprintf(w, " %s | %s |", ratio, tgt)
			for _, e := range extra {
				cell := ""
				if r := results[id][e]; r != nil {
					if v, ok := m.Get(r); ok {
						cell = fmtVal(v)
					}
				}
				fmt.Fprintf(w, " %s |", cell)
			}
			fmt.Fprintln(w)
		}
	}
	return missed
}
