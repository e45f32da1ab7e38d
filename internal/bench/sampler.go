package bench

import (
	"fmt"
	"sync"
	"time"
)

// Sample is one point of a run's time series.
type Sample struct {
	T            float64 `json:"t"` // seconds since the run started
	Connected    int64   `json:"connected"`
	Sent         int64   `json:"sent"`      // cumulative
	Delivered    int64   `json:"delivered"` // cumulative
	SentRate     float64 `json:"sent_per_s"`
	DeliverRate  float64 `json:"delivered_per_s"`
	BrokerCPU    float64 `json:"broker_cpu_pct,omitempty"`
	BrokerRSSMiB float64 `json:"broker_rss_mib,omitempty"`
}

// sampler records the time series and prints the progress line.
type sampler struct {
	r    *run
	pid  int
	t0   time.Time
	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu   sync.Mutex
	pts  []Sample
	last *ProcStat
	prev Sample
}

func newSampler(r *run, pid int) *sampler {
	return &sampler{r: r, pid: pid, t0: time.Now(), quit: make(chan struct{})}
}

// read takes a reading of the broker now (nil without a pid or on error).
func (s *sampler) read() *ProcStat {
	if s.pid == 0 {
		return nil
	}
	st, err := ReadProc(s.pid)
	if err != nil {
		s.r.noteErr("broker stats", err)
		return nil
	}
	return &st
}

func (s *sampler) start() {
	s.last = s.read()
	s.wg.Go(func() {
		t := time.NewTicker(s.r.cfg.SampleInterval)
		defer t.Stop()
		for {
			select {
			case <-s.quit:
				return
			case <-t.C:
				s.tick()
			}
		}
	})
}

func (s *sampler) stop() {
	s.once.Do(func() { close(s.quit) })
	s.wg.Wait()
}

func (s *sampler) tick() {
	r := s.r
	now := time.Now()
	p := Sample{T: now.Sub(s.t0).Seconds(), Connected: r.connected.Load(),
		Sent: r.sent.Load(), Delivered: r.delivered.Load()}
	s.mu.Lock()
	if dt := p.T - s.prev.T; dt > 0 {
		p.SentRate = float64(p.Sent-s.prev.Sent) / dt
		p.DeliverRate = float64(p.Delivered-s.prev.Delivered) / dt
	}
	if st := s.read(); st != nil {
		if s.last != nil {
			p.BrokerCPU = cpuPercent(*s.last, *st)
		}
		p.BrokerRSSMiB = float64(st.RSSBytes) / (1 << 20)
		s.last = st
	}
	s.pts = append(s.pts, p)
	s.prev = p
	s.mu.Unlock()
	if w := r.cfg.Progress; w != nil {
		line := fmt.Sprintf("%s %5.0fs conn %d/%d sent %d (%.0f/s) recv %d (%.0f/s) p99 %s",
			r.cfg.Label, p.T, p.Connected, r.attempted.Load(), p.Sent, p.SentRate, p.Delivered, p.DeliverRate,
			fmtDur(r.latency.Quantile(0.99)))
		if s.pid != 0 {
			line += fmt.Sprintf(" broker %.0f%% %.0f MiB", p.BrokerCPU, p.BrokerRSSMiB)
		}
		if r.cfg.ProgressTTY {
			fmt.Fprintf(w, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(w, line)
		}
	}
}

func (s *sampler) series() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.pts...)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0fµs", float64(d)/1e3)
}

// brokerStats derives the broker figures from the readings taken before
// connecting, after connecting and after the main phase.
func brokerStats(cfg *Config, before, afterConn, afterPhase *ProcStat, s *sampler, res *Result) *BrokerStats {
	if before == nil || afterConn == nil {
		return nil
	}
	b := &BrokerStats{PID: cfg.BrokerPID,
		RSSBeforeMiB:       mib(before.RSSBytes),
		RSSAfterConnectMiB: mib(afterConn.RSSBytes),
		ConnectCPUSeconds:  (afterConn.CPU - before.CPU).Seconds(),
		ConnectCPUPercent:  cpuPercent(*before, *afterConn),
	}
	if n := res.Connect.Succeeded; n > 0 {
		b.CPUPerConnectMs = 1e3 * b.ConnectCPUSeconds / float64(n)
	}
	b.RSSPeakMiB = b.RSSAfterConnectMiB
	for _, p := range s.series() {
		b.RSSPeakMiB = max(b.RSSPeakMiB, p.BrokerRSSMiB)
		b.CPUPercentMax = max(b.CPUPercentMax, p.BrokerCPU)
	}
	if afterPhase != nil {
		b.RSSEndMiB = mib(afterPhase.RSSBytes)
		b.PhaseCPUSeconds = (afterPhase.CPU - afterConn.CPU).Seconds()
		b.CPUPercent = cpuPercent(*afterConn, *afterPhase)
		if cfg.Scenario == Conn && res.Connect.Succeeded > 0 {
			// Memory held per idle connection at the end of the hold.
			b.RSSPerConnKiB = (float64(afterPhase.RSSBytes) - float64(before.RSSBytes)) / 1024 / float64(res.Connect.Succeeded)
		}
		if d := cpuDeliveries(res); d > 0 {
			b.CPUPerMessageUs = 1e6 * b.PhaseCPUSeconds / float64(d)
		}
	}
	return b
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// cpuDeliveries is the number of deliveries the broker's CPU over the
// publishing phase is divided by. In open loop, only those within the
// window: the backlog delivered afterwards costs CPU outside it. (Closed
// loop keeps every delivery, its backlog after the window being small.)
func cpuDeliveries(r *Result) int64 {
	if r.Params.OfferedPerSecond > 0 {
		return r.Messages.DeliveredInWindow
	}
	return r.Messages.Delivered
}
