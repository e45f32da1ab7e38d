package guard

import "time"

// ClientRates are the per-client rate limits, the Config fields of the
// same names. They are the only part of the guard's configuration that
// changes at run time (SetClientRates): each client's next packet is
// charged at the new rates, and the time it already owes is kept.
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
