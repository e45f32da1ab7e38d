package config

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Size is a number of bytes. In YAML it is written as a plain integer or
// with a unit: B, KB (1000), KiB (1024), MB (10^6), MiB (2^20), GB (10^9),
// GiB (2^30). Units are case-sensitive so that "Mb" (megabit) is not
// silently read as megabytes. In JSON it is a plain integer.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so that "KiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses a size such as "1MiB", "256KB", "4096" or "20 B".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (want a non-negative integer with an optional unit B, KB, KiB, MB, MiB, GB, GiB)", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(n * mult), nil
}

// String formats s with the largest binary unit that divides it exactly.
func (s Size) String() string {
	switch {
	case s != 0 && s%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", s>>30)
	case s != 0 && s%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", s>>20)
	case s != 0 && s%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", s>>10)
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErr(n, "expected a size such as 1MiB or 4096")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return typeErr(n, "%v", err)
	}
	*s = v
	return nil
}

// Duration is a time.Duration that reads Go duration syntax ("10s", "1h30m")
// extended with whole days and weeks ("14d", "1w", "2w3d"). In YAML "m" is
// minutes, as in Go; only mosquitto.conf's persistent_client_expiration
// reads "m" as a month. In JSON it is written with String, e.g. "10s".
type Duration time.Duration

// ParseDuration parses Go duration syntax plus the units "d" (24h) and
// "w" (7d). A bare "0" is allowed. Negative durations are refused.
func ParseDuration(s string) (Duration, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if t == "0" {
		return 0, nil
	}
	var total time.Duration
	rest := t
	// Peel off leading day and week components, then let Go parse the rest.
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) || (rest[i] != 'd' && rest[i] != 'w') {
			break
		}
		n, err := strconv.ParseInt(rest[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		unit := 24 * time.Hour
		if rest[i] == 'w' {
			unit *= 7
		}
		if n > int64(math.MaxInt64/unit) || total > time.Duration(math.MaxInt64)-time.Duration(n)*unit {
			return 0, fmt.Errorf("duration %q is too large", s)
		}
		total += time.Duration(n) * unit
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil || d < 0 {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 10s, 5m, 2h, 14d, 1w)", s)
		}
		if total > time.Duration(math.MaxInt64)-d {
			return 0, fmt.Errorf("duration %q is too large", s)
		}
		total += d
	}
	return Duration(total), nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration, but whole days as "Nd" (e.g. "14d").
func (d Duration) String() string {
	td := time.Duration(d)
	if td > 0 && td%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", td/(24*time.Hour))
	}
	return td.String()
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErr(n, "expected a duration such as 10s, 2h or 14d")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return typeErr(n, "%v", err)
	}
	*d = v
	return nil
}

// MarshalJSON writes d as a string ("10s").
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the form MarshalJSON writes.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// typeErr returns a yaml.TypeError so that the YAML decoder records the
// problem with its line and carries on, collecting every error.
func typeErr(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, fmt.Sprintf(format, args...))}}
}

// enumYAML decodes a scalar into dst if it is one of allowed.
func enumYAML(n *yaml.Node, dst *string, what string, allowed ...string) error {
	if n.Kind != yaml.ScalarNode {
		return typeErr(n, "%s must be one of %s", what, strings.Join(allowed, ", "))
	}
	for _, a := range allowed {
		if n.Value == a {
			*dst = a
			return nil
		}
	}
	return typeErr(n, "invalid %s %q (want one of %s)", what, n.Value, strings.Join(allowed, ", "))
}
