package pki

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Defaults for lifetimes and validity periods.
const (
	DefaultRootLifetime         = 20 * 365 * 24 * time.Hour
	DefaultIntermediateLifetime = 10 * 365 * 24 * time.Hour
	DefaultServerLifetime       = 90 * 24 * time.Hour
	DefaultDeviceLifetime       = 180 * 24 * time.Hour
	DefaultCRLValidity          = 7 * 24 * time.Hour
	DefaultOCSPValidity         = time.Hour
	DefaultBackdate             = time.Minute
	ocspSignerLifetime          = 30 * 24 * time.Hour
)

// Settings are the CA's policy, chosen at Init and kept in DIR/ca.json.
// Zero durations mean the defaults above.
type Settings struct {
	// Algorithm is the CA key algorithm and the default for keys the CA
	// generates for leaf certificates.
	Algorithm KeyAlgorithm `json:"algorithm"`
	// OCSPURL and CRLURL, when set, are written into every issued leaf
	// (authority information access and CRL distribution points).
	OCSPURL string `json:"ocsp_url,omitempty"`
	CRLURL  string `json:"crl_url,omitempty"`
	// Name constraints, written into the intermediate (critical) and
	// enforced before signing so the CA never issues what it cannot vouch for.
	PermittedDNSDomains []string `json:"permitted_dns_domains,omitempty"`
	ExcludedDNSDomains  []string `json:"excluded_dns_domains,omitempty"`
	PermittedIPRanges   []string `json:"permitted_ip_ranges,omitempty"`
	ExcludedIPRanges    []string `json:"excluded_ip_ranges,omitempty"`

	ServerLifetime Duration `json:"server_lifetime,omitempty"`
	DeviceLifetime Duration `json:"device_lifetime,omitempty"`
	CRLValidity    Duration `json:"crl_validity,omitempty"`
	OCSPValidity   Duration `json:"ocsp_validity,omitempty"`
	// Backdate is subtracted from NotBefore to tolerate clock skew
	// (default one minute; a negative value means none).
	Backdate Duration `json:"backdate,omitempty"`
}

func (s Settings) serverLifetime() time.Duration { return s.ServerLifetime.or(DefaultServerLifetime) }
func (s Settings) deviceLifetime() time.Duration { return s.DeviceLifetime.or(DefaultDeviceLifetime) }
func (s Settings) crlValidity() time.Duration    { return s.CRLValidity.or(DefaultCRLValidity) }
func (s Settings) ocspValidity() time.Duration   { return s.OCSPValidity.or(DefaultOCSPValidity) }
func (s Settings) backdate() time.Duration {
	if s.Backdate < 0 {
		return 0
	}
	return s.Backdate.or(DefaultBackdate)
}

func (s Settings) validate() []error {
	var errs []error
	if s.Algorithm != "" {
		if _, err := ParseKeyAlgorithm(string(s.Algorithm)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range append(append([]string{}, s.PermittedIPRanges...), s.ExcludedIPRanges...) {
		if _, _, err := net.ParseCIDR(r); err != nil {
			errs = append(errs, fmt.Errorf("pki: IP range %q is not CIDR notation (e.g. 10.0.0.0/8)", r))
		}
	}
	for _, d := range append(append([]string{}, s.PermittedDNSDomains...), s.ExcludedDNSDomains...) {
		if !validDNSName(strings.TrimPrefix(d, ".")) {
			errs = append(errs, fmt.Errorf("pki: DNS name constraint %q is not a domain name", d))
		}
	}
	for _, d := range []struct {
		name string
		d    Duration
	}{{"server lifetime", s.ServerLifetime}, {"device lifetime", s.DeviceLifetime}, {"CRL validity", s.CRLValidity}, {"OCSP validity", s.OCSPValidity}} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("pki: %s must not be negative", d.name))
		}
	}
	return errs
}

func parseRanges(rs []string) []*net.IPNet {
	var out []*net.IPNet
	for _, r := range rs {
		if _, n, err := net.ParseCIDR(r); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// Duration is a time.Duration that reads and writes as text with the
// extra units d (24h) and y (365d), e.g. "90d", "1y", "36h".
type Duration time.Duration

func (d Duration) or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// String formats d with the largest whole unit of d or y when possible.
func (d Duration) String() string {
	td := time.Duration(d)
	day := 24 * time.Hour
	switch {
	case td != 0 && td%(365*day) == 0:
		return strconv.FormatInt(int64(td/(365*day)), 10) + "y"
	case td != 0 && td%day == 0:
		return strconv.FormatInt(int64(td/day), 10) + "d"
	}
	return td.String()
}

// ParseDuration parses Go durations plus whole days ("30d") and years ("1y").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.ParseUint(n, 10, 32)
		if err == nil {
			return time.Duration(v) * 24 * time.Hour, nil
		}
	}
	if n, ok := strings.CutSuffix(s, "y"); ok {
		v, err := strconv.ParseUint(n, 10, 16)
		if err == nil {
			return time.Duration(v) * 365 * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("pki: bad duration %q (examples: 90d, 1y, 36h, 15m)", s)
	}
	return d, nil
}

// MarshalJSON writes d as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a string made by MarshalJSON.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseDuration(s)
	*d = Duration(v)
	return err
}
