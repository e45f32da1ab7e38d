package cli

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moatmq/moat/client"
)

// propArg is one `-D command identifier value` (mosquitto's MQTT 5
// property flag). user-property takes two values, key and value.
type propArg struct {
	cmd, id string
	values  []string
}

func (p propArg) String() string { return "-D " + p.cmd + " " + p.id }

// maxPropArgs bounds the -D flags of one command line.
const maxPropArgs = 256

// parseClientArgs parses the command line of moat pub or moat sub. They
// disable cobra's flag parsing because -D takes three values (four for
// user-property), which pflag cannot express: the -D groups are taken
// out here, the rest goes to pflag. help reports --help.
func parseClientArgs(cmd *cobra.Command, args []string) (props []propArg, help bool, err error) {
	fs := cmd.Flags()
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		if a == "-D" || a == "--property" {
			if i+2 >= len(args) {
				return nil, false, errors.New("-D needs a command, a property name and a value, e.g. -D publish content-type text/plain")
			}
			p := propArg{cmd: args[i+1], id: args[i+2]}
			n := 1
			if p.id == "user-property" {
				n = 2
			}
			if i+2+n >= len(args) {
				if n == 2 {
					return nil, false, fmt.Errorf("%s needs a key and a value", p)
				}
				return nil, false, fmt.Errorf("%s needs a value", p)
			}
			p.values = args[i+3 : i+3+n]
			i += 2 + n
			if len(props) == maxPropArgs {
				return nil, false, fmt.Errorf("more than %d -D flags", maxPropArgs)
			}
			props = append(props, p)
			continue
		}
		rest = append(rest, a)
		if takesSeparateValue(fs, a) && i+1 < len(args) {
			i++
			rest = append(rest, args[i])
		}
	}
	if err := fs.Parse(rest); err != nil {
		return nil, false, err
	}
	if fs.Changed("property") {
		return nil, false, errors.New("-D takes three words: -D COMMAND PROPERTY VALUE, e.g. -D publish content-type text/plain")
	}
	if h, _ := fs.GetBool("help"); h {
		return nil, true, nil
	}
	if fs.NArg() > 0 {
		return nil, false, fmt.Errorf("unexpected argument %q (flags as mosquitto: -t TOPIC, -m MESSAGE, …)", fs.Arg(0))
	}
	return props, false, nil
}

// takesSeparateValue reports whether the flag a (as written on the
// command line) consumes the next argument as its value.
func takesSeparateValue(fs *pflag.FlagSet, a string) bool {
	switch {
	case strings.HasPrefix(a, "--"):
		if strings.Contains(a, "=") {
			return false
		}
		f := fs.Lookup(a[2:])
		return f != nil && f.NoOptDefVal == ""
	case strings.HasPrefix(a, "-") && len(a) > 1:
		// -abc: bool shorthands until one that takes a value, which takes
		// the rest of the word or, at its end, the next argument.
		for j := 1; j < len(a); j++ {
			f := fs.ShorthandLookup(a[j : j+1])
			if f == nil {
				return false
			}
			if f.NoOptDefVal == "" {
				return j == len(a)-1
			}
		}
	}
	return false
}

// propTargets are where -D properties go; a nil target means the command
// does not send that packet.
type propTargets struct {
	cfg       *client.Config
	publish   *client.Properties // moat pub
	subscribe *client.Properties // moat sub
}

// propertyNames lists the -D properties moat supports, by command.
var propertyNames = map[string][]string{
	"connect": {"maximum-packet-size", "receive-maximum", "request-problem-information",
		"request-response-information", "session-expiry-interval", "topic-alias-maximum", "user-property"},
	"publish": {"content-type", "correlation-data", "message-expiry-interval", "payload-format-indicator",
		"response-topic", "user-property"},
	"subscribe": {"subscription-identifier", "user-property"},
	"will": {"content-type", "correlation-data", "message-expiry-interval", "payload-format-indicator",
		"response-topic", "user-property", "will-delay-interval"},
}

// applyProps sets the -D properties on their packets. Properties moat
// does not send (auth, disconnect, unsubscribe, topic-alias, …) are
// refused rather than ignored.
func applyProps(props []propArg, t propTargets) error {
	if len(props) == 0 {
		return nil
	}
	if t.cfg.Version != client.V5 {
		return errors.New("-D sets MQTT 5 properties: not with -V 311 or 31")
	}
	for _, p := range props {
		var dst *client.Properties
		switch p.cmd {
		case "connect":
			dst = &t.cfg.ConnectProperties
		case "publish":
			dst = t.publish
		case "subscribe":
			dst = t.subscribe
		case "will":
			if t.cfg.Will == nil {
				return fmt.Errorf("%s: there is no will: add --will-topic", p)
			}
			dst = &t.cfg.Will.Properties
		}
		if dst == nil || !slices.Contains(propertyNames[p.cmd], p.id) {
			return fmt.Errorf("%s: not supported here; supported: %s", p, supportedProps(t))
		}
		if err := setProp(t.cfg, dst, p); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

func supportedProps(t propTargets) string {
	var s []string
	for _, c := range []string{"connect", "publish", "subscribe", "will"} {
		if (c == "publish" && t.publish == nil) || (c == "subscribe" && t.subscribe == nil) {
			continue
		}
		s = append(s, c+" "+strings.Join(propertyNames[c], "|"))
	}
	return strings.Join(s, "; ")
}

func setProp(cfg *client.Config, dst *client.Properties, p propArg) error {
	v := p.values[0]
	num := func(bits int) (uint64, error) {
		n, err := strconv.ParseUint(v, 10, bits)
		if err != nil {
			return 0, fmt.Errorf("%q: want a number 0..%d", v, uint64(1)<<bits-1)
		}
		return n, nil
	}
	flag := func() (byte, error) {
		switch v {
		case "0", "1":
			return v[0] - '0', nil
		}
		return 0, fmt.Errorf("%q: want 0 or 1", v)
	}
	switch p.id {
	case "user-property":
		dst.User = append(dst.User, client.UserProperty{Key: v, Value: p.values[1]})
	case "content-type":
		dst.SetContentType(v)
	case "response-topic":
		dst.SetResponseTopic(v)
	case "correlation-data":
		dst.SetCorrelationData([]byte(v))
	case "message-expiry-interval":
		n, err := num(32)
		if err != nil {
			return err
		}
		dst.SetMessageExpiry(uint32(n))
	case "payload-format-indicator":
		b, err := flag()
		if err != nil {
			return err
		}
		dst.SetPayloadFormat(b)
	case "will-delay-interval":
		n, err := num(32)
		if err != nil {
			return err
		}
		dst.SetWillDelay(uint32(n))
	case "subscription-identifier":
		n, err := num(32)
		if err != nil || n == 0 || n > 268435455 {
			return fmt.Errorf("%q: want 1..268435455", v)
		}
		dst.SubscriptionIDs = []uint32{uint32(n)}
	case "session-expiry-interval":
		n, err := num(32)
		if err != nil {
			return err
		}
		cfg.SessionExpiry = uint32(n)
	case "receive-maximum":
		n, err := num(16)
		if err != nil || n == 0 {
			return fmt.Errorf("%q: want 1..65535", v)
		}
		cfg.ReceiveMaximum = uint16(n)
	case "maximum-packet-size":
		n, err := num(32)
		if err != nil || n == 0 {
			return fmt.Errorf("%q: want 1..4294967295", v)
		}
		cfg.MaxPacketSize = uint32(n)
	case "topic-alias-maximum":
		n, err := num(16)
		if err != nil {
			return err
		}
		cfg.TopicAliasMaximum = uint16(n)
	case "request-problem-information":
		b, err := flag()
		if err != nil {
			return err
		}
		dst.SetRequestProblemInfo(b)
	case "request-response-information":
		b, err := flag()
		if err != nil {
			return err
		}
		dst.SetRequestResponseInfo(b)
	}
	return nil
}
