package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Dests is a list of log destinations. In YAML it may be written as one
// value ("dest: stderr") or a list ("dest: [stderr, file]"); "none" or an
// empty list means no logging.
type Dests []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Dests) UnmarshalYAML(n *yaml.Node) error {
	var vals []string
	switch n.Kind {
	case yaml.ScalarNode:
		vals = []string{n.Value}
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return typeErr(item, "log.dest entries must be stderr, stdout, file or none")
			}
			vals = append(vals, item.Value)
		}
	default:
		return typeErr(n, "log.dest must be stderr, stdout, file, none or a list of them")
	}
	out := Dests{}
	for _, v := range vals {
		switch v {
		case "none":
		case "stderr", "stdout", "file":
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		default:
			return typeErr(n, "invalid log.dest %q (want stderr, stdout, file or none)", v)
		}
	}
	*d = out
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (t *Transport) UnmarshalYAML(n *yaml.Node) error {
	return enumYAML(n, (*string)(t), "transport", "tcp", "tls", "ws", "wss")
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (a *ClientAuth) UnmarshalYAML(n *yaml.Node) error {
	return enumYAML(n, (*string)(a), "client_auth", "none", "optional", "required")
}

var (
	yamlLineRE    = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	yamlUnknownRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// yamlPaths walks a YAML tree and records every key's path (e.g.
// "listeners[0].tls.cert"), the path of the key on each line and the line
// of each sequence item.
type yamlPaths struct {
	set    map[string]bool
	byLine map[int]string
	items  map[string]int
	lines  map[string]int // line of every key
}

func (y *yamlPaths) walk(n *yaml.Node, prefix string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			y.walk(c, prefix)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			y.set[p] = true
			y.lines[p] = k.Line
			if prev, ok := y.byLine[k.Line]; ok {
				// Several keys on one line (a flow mapping): label
				// errors on that line with what the keys share.
				p2 := commonPath(prev, p)
				y.byLine[k.Line] = p2
			} else {
				y.byLine[k.Line] = p
			}
			y.walk(v, p)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			y.items[p] = c.Line
			y.walk(c, p)
			if _, ok := y.byLine[c.Line]; !ok {
				y.byLine[c.Line] = p
			}
		}
	}
}

// commonPath returns the longest dotted prefix shared by two key paths.
func commonPath(a, b string) string {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	n := 0
	for n < len(as) && n < len(bs) && as[n] == bs[n] {
		n++
	}
	return strings.Join(as[:n], ".")
}

// parseYAML reads Moat's YAML syntax strictly. A file without "listeners"
// gets Default()'s secure listener.
func parseYAML(name string, data []byte) (*Config, []error) {
	c := Default()
	c.Source, c.Format = name, FormatYAML
	var errs []error
	lineErr := func(line int, msg string) {
		errs = append(errs, &Error{File: name, Line: line, Msg: msg})
	}

	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			n, _ := strconv.Atoi(m[1])
			lineErr(n, "invalid YAML: "+m[2])
		} else {
			lineErr(0, "invalid YAML: "+strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return nil, errs
	}
	paths := &yamlPaths{set: map[string]bool{}, byLine: map[int]string{}, items: map[string]int{}, lines: map[string]int{}}
	paths.walk(&root, "")

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(c)
	var te *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF):
	case errors.As(err, &te):
		for _, e := range te.Errors {
			m := yamlLineRE.FindStringSubmatch(e)
			if m == nil {
				lineErr(0, e)
				continue
			}
			n, _ := strconv.Atoi(m[1])
			msg := m[2]
			if u := yamlUnknownRE.FindStringSubmatch(msg); u != nil {
				msg = fmt.Sprintf("unknown key %q", u[1])
				if p := paths.byLine[n]; p != "" && p != u[1] {
					msg = fmt.Sprintf("unknown key %q (at %s)", u[1], p)
				}
			} else if p := paths.byLine[n]; p != "" {
				msg = p + ": " + msg
			}
			lineErr(n, msg)
		}
	default:
		lineErr(0, err.Error())
	}
	if len(errs) > 0 {
		return nil, errs
	}

	used := map[string]bool{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		pfx := fmt.Sprintf("listeners[%d]", i)
		has := func(p string) bool { return paths.set[pfx+"."+p] }
		l.pos = fmt.Sprintf("%s:%d", name, paths.items[pfx])
		if l.Network == "" {
			l.Network = "tcp"
		}
		if l.Transport == "" {
			l.Transport = TransportTLS
		}
		if !has("allow_zero_length_client_id") {
			l.AllowZeroLengthClientID = true
		}
		if !has("auto_id_prefix") {
			l.AutoIDPrefix = "auto-"
		}
		if !has("max_qos") {
			l.MaxQoS = 2
		}
		if !has("max_topic_alias") {
			l.MaxTopicAlias = 10
		}
		if l.Transport.Secure() && l.TLS == nil {
			l.TLS = defaultTLS()
		}
		if t := l.TLS; t != nil {
			d := defaultTLS()
			if t.ClientAuth == "" {
				t.ClientAuth = d.ClientAuth
			}
			if t.MinVersion == "" {
				t.MinVersion = d.MinVersion
			}
			if t.CRLStale == "" {
				t.CRLStale = d.CRLStale
			}
			if t.OCSP.Mode == "" {
				t.OCSP.Mode = d.OCSP.Mode
			}
			if !has("tls.ocsp.timeout") {
				t.OCSP.Timeout = d.OCSP.Timeout
			}
			if t.Identity.UsernameFrom == "" {
				t.Identity.UsernameFrom = IdentityNone
			}
			if t.Identity.ClientIDFrom == "" {
				t.Identity.ClientIDFrom = IdentityNone
			}
		}
		if l.Name == "" {
			_, port, _ := net.SplitHostPort(l.Address)
			base := fmt.Sprintf("%s-%s", l.Transport, port)
			if c.Cluster.Enabled() {
				// In a cluster a listener's name must be the same on
				// every node (an anonymous client's session belongs to
				// the listener's name, and listener rules match by it),
				// while the nodes' ports often differ (several nodes on
				// one host): the default names the transport alone.
				base = string(l.Transport)
			}
			l.Name = base
			for n := 2; used[l.Name]; n++ {
				l.Name = fmt.Sprintf("%s-%d", base, n)
			}
		}
		used[l.Name] = true
	}
	c.keyPos = map[string]string{}
	for p, line := range paths.items {
		c.keyPos[p] = fmt.Sprintf("%s:%d", name, line)
	}
	for p, line := range paths.lines {
		c.keyPos[p] = fmt.Sprintf("%s:%d", name, line)
	}
	for p := range paths.set {
		c.Set = append(c.Set, p)
	}
	slices.Sort(c.Set)
	return c, nil
}
