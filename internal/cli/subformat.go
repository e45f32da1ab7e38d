package cli

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/moatmq/moat/client"
)

// msgFormat is a parsed moat sub -F format: mosquitto_sub's format
// specifiers (%t topic, %p payload, …), time fields (@Y, @H, …) and
// backslash escapes. See docs/client.md for the list.
type msgFormat struct {
	parts []fmtPart
}

// fmtPart is literal text (verb 0), a % specifier (verb its letter) or a
// @ time field (at set, verb its letter).
type fmtPart struct {
	verb byte
	at   bool
	text string
}

// maxFormatLen bounds -F.
const maxFormatLen = 4096

// parseFormat parses -F FORMAT; unknown specifiers are refused so that a
// format written for mosquitto_sub never prints something else silently.
func parseFormat(s string) (*msgFormat, error) {
	if len(s) > maxFormatLen {
		return nil, fmt.Errorf("-F: format longer than %d bytes", maxFormatLen)
	}
	f := &msgFormat{}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			f.parts = append(f.parts, fmtPart{text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' && c != '@' && c != '\\' {
			lit.WriteByte(c)
			continue
		}
		if i+1 >= len(s) {
			return nil, fmt.Errorf("-F %q: %c at the end (write %c%c for a literal %c)", s, c, c, c, c)
		}
		i++
		n := s[i]
		switch c {
		case '\\':
			e, ok := formatEscapes[n]
			if !ok {
				return nil, fmt.Errorf(`-F %q: unknown escape \%c (known: \\ \0 \a \e \n \r \t \v)`, s, n)
			}
			lit.WriteByte(e)
		case '%':
			if n == '%' {
				lit.WriteByte('%')
				continue
			}
			if !strings.ContainsRune(formatVerbs, rune(n)) {
				return nil, fmt.Errorf("-F %q: %%%c is not supported (supported: %%%s)", s, n, strings.Join(strings.Split(formatVerbs, ""), " %"))
			}
			flush()
			f.parts = append(f.parts, fmtPart{verb: n})
		case '@':
			if n == '@' {
				lit.WriteByte('@')
				continue
			}
			if !strings.ContainsRune(formatTimeFields, rune(n)) {
				return nil, fmt.Errorf("-F %q: @%c is not supported (supported: @%s, and @@ for @)", s, n, strings.Join(strings.Split(formatTimeFields, ""), " @"))
			}
			flush()
			f.parts = append(f.parts, fmtPart{verb: n, at: true})
		}
	}
	flush()
	return f, nil
}

var formatEscapes = map[byte]byte{'\\': '\\', '0': 0, 'a': '\a', 'e': 0x1b, 'n': '\n', 'r': '\r', 't': '\t', 'v': '\v'}

// formatVerbs are the supported % specifiers.
const formatVerbs = "tpqrlmIUxXjJCEFRSPD"

// formatTimeFields are the supported @ time fields (strftime letters).
const formatTimeFields = "YmdHMSzsN"

// write prints m by the format; now is the time of reception.
func (f *msgFormat) write(w *bufio.Writer, m *client.Message, now time.Time) error {
	p := &m.Properties
	for _, part := range f.parts {
		if part.at {
			w.WriteString(timeField(part.verb, now))
			continue
		}
		switch part.verb {
		case 0:
			w.WriteString(part.text)
		case 't':
			w.WriteString(m.Topic)
		case 'p':
			w.Write(m.Payload)
		case 'q':
			w.WriteString(strconv.Itoa(int(m.QoS)))
		case 'r':
			if m.Retain {
				w.WriteByte('1')
			} else {
				w.WriteByte('0')
			}
		case 'l':
			w.WriteString(strconv.Itoa(len(m.Payload)))
		case 'm':
			w.WriteString(strconv.Itoa(int(m.PacketID())))
		case 'I':
			w.WriteString(now.Format("2006-01-02T15:04:05-0700"))
		case 'U':
			fmt.Fprintf(w, "%d.%09d", now.Unix(), now.Nanosecond())
		case 'x':
			w.WriteString(hex.EncodeToString(m.Payload))
		case 'X':
			w.WriteString(strings.ToUpper(hex.EncodeToString(m.Payload)))
		case 'j', 'J':
			b, err := json.Marshal(toJSON(m))
			if err != nil {
				return err
			}
			w.Write(b)
		case 'C':
			w.WriteString(p.ContentType)
		case 'E':
			if p.Has(client.PropMessageExpiry) {
				w.WriteString(strconv.FormatUint(uint64(p.MessageExpiry), 10))
			}
		case 'F':
			if p.Has(client.PropPayloadFormat) {
				w.WriteString(strconv.Itoa(int(p.PayloadFormat)))
			}
		case 'R':
			w.WriteString(p.ResponseTopic)
		case 'D':
			w.Write(p.CorrelationData)
		case 'S':
			for i, id := range p.SubscriptionIDs {
				if i > 0 {
					w.WriteByte(',')
				}
				w.WriteString(strconv.FormatUint(uint64(id), 10))
			}
		case 'P':
			for i, u := range p.User {
				if i > 0 {
					w.WriteByte(' ')
				}
				w.WriteString(u.Key + ":" + u.Value)
			}
		}
	}
	return nil
}

func timeField(c byte, t time.Time) string {
	switch c {
	case 'Y':
		return strconv.Itoa(t.Year())
	case 'm':
		return t.Format("01")
	case 'd':
		return t.Format("02")
	case 'H':
		return t.Format("15")
	case 'M':
		return t.Format("04")
	case 'S':
		return t.Format("05")
	case 'z':
		return t.Format("-0700")
	case 's':
		return strconv.FormatInt(t.Unix(), 10)
	case 'N':
		return fmt.Sprintf("%09d", t.Nanosecond())
	}
	return ""
}
