package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// StrftimeSpecifiers lists the strftime conversions TimeFormat supports,
// the ones Mosquitto's log_timestamp_format is commonly written with.
const StrftimeSpecifiers = "%Y %m %d %H %M %S %z %Z %s %F %T %e %j %b %a %p %y %%"

// strftimeLayouts maps a specifier to its Go layout; %s and %% are
// handled apart.
var strftimeLayouts = map[byte]string{
	'Y': "2006", 'm': "01", 'd': "02", 'H': "15", 'M': "04", 'S': "05",
	'z': "-0700", 'Z': "MST", 'F': "2006-01-02", 'T': "15:04:05",
	'e': "_2", 'j': "002", 'b': "Jan", 'a': "Mon", 'p': "PM", 'y': "06",
}

// TimeFormat is a parsed strftime format (log.timestamp_format). The zero
// value formats nothing; use ParseTimeFormat. Safe for concurrent use.
type TimeFormat struct {
	parts []timePart
}

// timePart is literal text (spec 0) or one specifier.
type timePart struct {
	lit  string
	spec byte
}

// ParseTimeFormat parses a strftime format such as "%Y-%m-%dT%H:%M:%S".
// It refuses specifiers outside StrftimeSpecifiers, so that a format is
// never printed half-converted.
func ParseTimeFormat(f string) (*TimeFormat, error) {
	if f == "" {
		return nil, fmt.Errorf("config: empty time format")
	}
	tf := &TimeFormat{}
	var lit strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			lit.WriteByte(f[i])
			continue
		}
		if i+1 == len(f) {
			return nil, fmt.Errorf("config: time format %q ends with a lone %%; write %%%% for a percent sign", f)
		}
		i++
		c := f[i]
		if c == '%' {
			lit.WriteByte('%')
			continue
		}
		if _, ok := strftimeLayouts[c]; !ok && c != 's' {
			return nil, fmt.Errorf("config: time format %q: %%%c is not supported (supported: %s)", f, c, StrftimeSpecifiers)
		}
		if lit.Len() > 0 {
			tf.parts = append(tf.parts, timePart{lit: lit.String()})
			lit.Reset()
		}
		tf.parts = append(tf.parts, timePart{spec: c})
	}
	if lit.Len() > 0 {
		tf.parts = append(tf.parts, timePart{lit: lit.String()})
	}
	return tf, nil
}

// Format returns t formatted; t is used in its own location.
func (tf *TimeFormat) Format(t time.Time) string {
	b := make([]byte, 0, 32)
	for _, p := range tf.parts {
		switch p.spec {
		case 0:
			b = append(b, p.lit...)
		case 's':
			b = strconv.AppendInt(b, t.Unix(), 10)
		default:
			b = t.AppendFormat(b, strftimeLayouts[p.spec])
		}
	}
	return string(b)
}
