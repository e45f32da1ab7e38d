package bench

import (
	"errors"
	"fmt"
	"slices"
)

// MergeResults combines the results of several rounds of one scenario
// against one broker into a single Result, as if the rounds had been one
// run: counts and times add up, rates are totals over total time,
// latency percentiles come from the merged histograms (exact, as long as
// every round carries LatencyHist), CPU figures are weighted by each
// round's phase time, RSS peaks are the highest. Running a scenario in
// rounds that alternate between brokers spreads bursts of load from
// outside over both, which a single long run per broker does not.
//
// The rounds must share scenario and label; the merged Params are the
// first round's with the durations added up.
func MergeResults(rs []*Result) (*Result, error) {
	if len(rs) == 0 {
		return nil, errors.New("bench: nothing to merge")
	}
	first := rs[0]
	for _, r := range rs[1:] {
		if r.Scenario != first.Scenario || r.Label != first.Label {
			return nil, fmt.Errorf("bench: cannot merge %q (%s) with %q (%s)", r.Label, r.Scenario, first.Label, first.Scenario)
		}
	}
	m := &Result{Label: first.Label, Scenario: first.Scenario, Params: first.Params, Start: first.Start, GoMaxProcs: first.GoMaxProcs}
	m.Params.DurationSeconds = 0
	var lat, hs, ca Histogram
	exact := true
	var connTime float64 // time to the last successful connection, summed
	var brokers []*BrokerStats
	var host HostStats
	var hostTime float64
	for _, r := range rs {
		if r.Host != nil {
			w := r.Messages.WindowSeconds
			if r.Scenario == string(Conn) {
				w = r.Params.DurationSeconds
			}
			host.StealPct += r.Host.StealPct * w
			host.IdlePct += r.Host.IdlePct * w
			hostTime += w
		}
		m.Params.DurationSeconds += r.Params.DurationSeconds
		for _, s := range r.Series {
			s.T += m.Elapsed
			m.Series = append(m.Series, s)
		}
		m.Elapsed += r.Elapsed

		c := &m.Connect
		c.Attempted += r.Connect.Attempted
		c.Succeeded += r.Connect.Succeeded
		c.Failed += r.Connect.Failed
		c.Resumed += r.Connect.Resumed
		c.Seconds += r.Connect.Seconds
		if r.Connect.PerSecond > 0 {
			connTime += float64(r.Connect.Succeeded) / r.Connect.PerSecond
		}

		ms := &m.Messages
		ms.Sent += r.Messages.Sent
		ms.Acked += r.Messages.Acked
		ms.AckedInWindow += r.Messages.AckedInWindow
		ms.Delivered += r.Messages.Delivered
		ms.DeliveredInWindow += r.Messages.DeliveredInWindow
		if ms.Expected >= 0 && r.Messages.Expected >= 0 {
			ms.Expected += r.Messages.Expected
		} else {
			ms.Expected = -1
		}
		ms.Lost += r.Messages.Lost
		ms.Foreign += r.Messages.Foreign
		ms.DecryptErrors += r.Messages.DecryptErrors
		ms.OutOfOrder += r.Messages.OutOfOrder
		ms.WindowSeconds += r.Messages.WindowSeconds

		m.Dropped += r.Dropped
		for _, e := range r.Errors {
			if !slices.Contains(m.Errors, e) {
				m.Errors = append(m.Errors, e)
			}
		}
		if r.Latency.Count > 0 && r.LatencyHist == nil {
			exact = false
		}
		for _, x := range []struct {
			h *Histogram
			d *HistData
		}{{&lat, r.LatencyHist}, {&hs, r.HandshakeHist}, {&ca, r.ConnackHist}} {
			if err := x.h.AddData(x.d); err != nil {
				return nil, err
			}
		}
		if r.Broker != nil {
			brokers = append(brokers, r.Broker)
		}
	}
	if !exact {
		return nil, errors.New("bench: a round has latencies but no latency_hist (written by an older moat bench?); cannot merge exactly")
	}

	c := &m.Connect
	if c.Attempted > 0 {
		c.SuccessRate = float64(c.Succeeded) / float64(c.Attempted)
	}
	if connTime > 0 {
		c.PerSecond = float64(c.Succeeded) / connTime
	}
	c.Handshake, c.Connack = hs.Summary(), ca.Summary()

	ms := &m.Messages
	if ms.Expected < 0 {
		ms.Lost, ms.LossRate = 0, 0
	} else if ms.Expected > 0 {
		ms.LossRate = float64(ms.Lost) / float64(ms.Expected)
	}
	if ms.WindowSeconds > 0 {
		ms.SentPerSecond = float64(ms.Sent) / ms.WindowSeconds
		ms.DeliveredPerSecond = float64(ms.DeliveredInWindow) / ms.WindowSeconds
		ms.AcceptedPerSecond = ms.SentPerSecond
		if m.Params.QoS > 0 {
			ms.AcceptedPerSecond = float64(ms.AckedInWindow) / ms.WindowSeconds
		}
	}

	m.Latency = lat.Summary()
	m.LatencyBuckets, m.HandshakeBuckets = lat.Buckets(60), hs.Buckets(60)
	m.LatencyHist, m.HandshakeHist, m.ConnackHist = lat.Data(), hs.Data(), ca.Data()
	if len(brokers) == len(rs) {
		m.Broker = mergeBroker(brokers, rs, m)
	}
	if hostTime > 0 {
		m.Host = &HostStats{StealPct: host.StealPct / hostTime, IdlePct: host.IdlePct / hostTime}
	}
	return m, nil
}

// mergeBroker combines the broker figures of the rounds rs.
func mergeBroker(bs []*BrokerStats, rs []*Result, m *Result) *BrokerStats {
	out := &BrokerStats{PID: bs[0].PID, RSSBeforeMiB: bs[0].RSSBeforeMiB}
	var phase, cpuWeighted, conn, connWeighted, rssPerConn float64
	for i, b := range bs {
		out.RSSAfterConnectMiB = max(out.RSSAfterConnectMiB, b.RSSAfterConnectMiB)
		out.RSSEndMiB = max(out.RSSEndMiB, b.RSSEndMiB)
		out.RSSPeakMiB = max(out.RSSPeakMiB, b.RSSPeakMiB)
		out.CPUPercentMax = max(out.CPUPercentMax, b.CPUPercentMax)
		out.ConnectCPUSeconds += b.ConnectCPUSeconds
		out.PhaseCPUSeconds += b.PhaseCPUSeconds
		// Phase CPU % is weighted by the phase's length, connection CPU %
		// by the connection phase's.
		w := rs[i].Messages.WindowSeconds
		if rs[i].Scenario == string(Conn) {
			w = rs[i].Params.DurationSeconds
		}
		phase += w
		cpuWeighted += b.CPUPercent * w
		conn += rs[i].Connect.Seconds
		connWeighted += b.ConnectCPUPercent * rs[i].Connect.Seconds
		rssPerConn += b.RSSPerConnKiB * float64(rs[i].Connect.Succeeded)
	}
	if phase > 0 {
		out.CPUPercent = cpuWeighted / phase
	}
	if conn > 0 {
		out.ConnectCPUPercent = connWeighted / conn
	}
	if n := m.Connect.Succeeded; n > 0 {
		out.CPUPerConnectMs = 1e3 * out.ConnectCPUSeconds / float64(n)
		out.RSSPerConnKiB = rssPerConn / float64(n)
	}
	if d := cpuDeliveries(m); d > 0 {
		out.CPUPerMessageUs = 1e6 * out.PhaseCPUSeconds / float64(d)
	}
	return out
}
