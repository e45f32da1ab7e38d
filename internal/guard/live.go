package guard

import "time"

// ClientRates are the per-client rate limits, the Config fields of the
// same names. They change at run time (SetClientRates), as the detectors
// do (Detectors); the rest of the configuration is read at start. Each
// client's next packet is charged at the new rates, and the time it
// already owes is kept.
type ClientRates struct {
	MessageRate   float64
	MessageBurst  int
	ByteRate      float64
	ByteBurst     int
	ThrottleLimit time.Duration
}

// ClientRates returns the per-client rate limits in force, defaults
// applied. Safe for concurrent use.
func (g *Guard) ClientRates() ClientRates { return *g.rates.Load() }

// SetClientRates replaces the per-client rate limits; zero fields take
// their defaults, as in Config. Invalid rates change nothing and return
// every problem. Safe for concurrent use.
func (g *Guard) SetClientRates(r ClientRates) (ClientRates, error) {
	c := Config{MessageRate: r.MessageRate, MessageBurst: r.MessageBurst, ByteRate: r.ByteRate, ByteBurst: r.ByteBurst,
		ThrottleLimit: r.ThrottleLimit}
	s, err := c.resolve()
	if err != nil {
		return g.ClientRates(), err
	}
	nr := clientRatesOf(&s)
	g.rates.Store(nr)
	return *nr, nil
}

func clientRatesOf(s *settings) *ClientRates {
	return &ClientRates{MessageRate: s.MessageRate, MessageBurst: s.MessageBurst, ByteRate: s.ByteRate, ByteBurst: s.ByteBurst,
		ThrottleLimit: s.ThrottleLimit}
}

// Detectors are the behaviour detectors' settings, the Config fields of
// the same names. They change at run time (SetDetectors): each detector's
// next event is judged by its new settings. Counts already kept stay,
// except that an identity's count starts anew when its detector's
// threshold changed; identities no longer counted (Keys) are forgotten
// once idle, as any.
type Detectors struct {
	AuthFailures, TopicScan, Flapping, Abnormal, Undeliverable, Silence, LimitAbuse Detector
}

// fields lists a Detectors' fields by detector name.
func (ds *Detectors) fields() map[string]*Detector {
	return map[string]*Detector{
		DetectAuthFailures: &ds.AuthFailures, DetectTopicScan: &ds.TopicScan, DetectFlapping: &ds.Flapping,
		DetectAbnormal: &ds.Abnormal, DetectUndeliverable: &ds.Undeliverable, DetectSilence: &ds.Silence,
		DetectLimitAbuse: &ds.LimitAbuse,
	}
}

// Detectors returns the detectors' settings in force, defaults applied.
// Safe for concurrent use.
func (g *Guard) Detectors() Detectors {
	var ds Detectors
	for name, f := range ds.fields() {
		*f = *g.det[name].cfg.Load()
	}
	return ds
}

// SetDetectors replaces the detectors' settings; zero fields take their
// defaults, as in Config. Invalid settings change nothing and return
// every problem. It returns the settings now in force. Safe for
// concurrent use.
func (g *Guard) SetDetectors(ds Detectors) (Detectors, error) {
	c := Config{AuthFailures: ds.AuthFailures, TopicScan: ds.TopicScan, Flapping: ds.Flapping, Abnormal: ds.Abnormal,
		Undeliverable: ds.Undeliverable, Silence: ds.Silence, LimitAbuse: ds.LimitAbuse}
	s, err := c.resolve()
	if err != nil {
		return g.Detectors(), err
	}
	for name, d := range s.detectors {
		g.det[name].cfg.Store(&d)
	}
	return g.Detectors(), nil
}
