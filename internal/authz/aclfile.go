package authz

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits on an acl_file. Mosquitto has none; a file beyond them is refused
// rather than read into memory.
const (
	MaxACLFileSize = 64 << 20 // bytes
	maxACLLine     = 1 << 17  // bytes; a topic is at most 65,535
)

// access bits of an acl_file line, as Mosquitto has them.
const (
	accessNone  = 0 // "deny"
	accessRead  = 1
	accessWrite = 2
)

type aclLine struct {
	p      *pattern
	access uint8
	rule   string // FILE:LINE
	allow  string // reason when it grants
	deny   string // reason when it denies
}

type aclList struct {
	lines []aclLine   // deny lines first, then grants in file order
	index *topicIndex // the lines by their topics, built once parsed
}

func (l *aclList) buildIndex() {
	es := make([]indexEntry, len(l.lines))
	for i := range l.lines {
		es[i] = indexEntry{pos: int32(i), patterns: []*pattern{l.lines[i].p}}
	}
	l.index = newTopicIndex(es)
}

// check returns the decision of the first line that decides a publish
// (want accessWrite) or receive (accessRead) on topic t.
func (l *aclList) check(s *Subject, t string, want uint8) (Decision, bool) {
	m := newMerger()
	l.index.collect(&m, t, false)
	for {
		i, ok := m.next()
		if !ok {
			return Decision{}, false
		}
		e := &l.lines[i]
		if !e.p.match(s, t) {
			continue
		}
		if e.access == accessNone {
			return Decision{Reason: e.deny, Rule: e.rule}, true
		}
		if e.access&want != 0 {
			return Decision{Allow: true, Reason: e.allow, Rule: e.rule}, true
		}
	}
}

func (l *aclList) add(e aclLine) {
	if e.access == accessNone {
		n := 0
		for n < len(l.lines) && l.lines[n].access == accessNone {
			n++
		}
		l.lines = append(l.lines, aclLine{})
		copy(l.lines[n+1:], l.lines[n:])
		l.lines[n] = e
		return
	}
	l.lines = append(l.lines, e)
}

// ACLFile is a parsed Mosquitto acl_file. It is immutable and safe for
// concurrent use.
//
// Semantics are Mosquitto 2.0's: topic lines before any user line apply to
// anonymous clients (and to clients without a username); a user's lines
// apply to that username; pattern lines apply to every client with %u and
// %c substituted (a pattern with %u never matches a client without a
// username). A deny line that matches wins over grants of the same list;
// the user's (or anonymous) lines are checked before the patterns, so a
// user's grant wins over a pattern deny. read grants receive, write grants
// publish. A client whose username or client ID contains '+' or '#' is
// denied everything the user's own lines do not grant when patterns exist.
// Publishing to $SYS topics and publishing or receiving on $share topics
// is always denied.
//
// Where Moat is stricter: a subscription is refused when no line can ever
// let the client receive a message it matches (Mosquitto accepts every
// subscription); a %u or %c value containing '/' never matches a pattern;
// a pattern whose substitution would start with '$' never matches.
type ACLFile struct {
	name     string
	anon     *aclList
	users    map[string]*aclList
	patterns aclList
}

// Name returns the file name given to ParseACLFile.
func (a *ACLFile) Name() string { return a.name }

// ParseACLFile parses a Mosquitto acl_file from r; name is used in
// Decision.Rule ("NAME:LINE") and errors. Like Mosquitto it refuses the
// whole file on an invalid line; unlike Mosquitto it also refuses files
// larger than MaxACLFileSize and lines longer than 128 KiB.
func ParseACLFile(name string, r io.Reader) (*ACLFile, error) {
	a := &ACLFile{name: name, users: map[string]*aclList{}}
	cr := &countReader{r: io.LimitReader(r, MaxACLFileSize+1)}
	br := bufio.NewReaderSize(cr, 64<<10)
	var (
		user *aclList // nil: the anonymous section
		n    int
	)
	for {
		raw, err := readLine(br)
		if cr.n > MaxACLFileSize {
			return nil, fmt.Errorf("authz: acl_file %s is larger than %d bytes", name, MaxACLFileSize)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			if errors.Is(err, errLongLine) {
				return nil, fmt.Errorf("authz: %s:%d: line longer than %d bytes", name, n+1, maxACLLine)
			}
			return nil, fmt.Errorf("authz: reading acl_file %s: %w", name, err)
		}
		if len(raw) == 0 && errors.Is(err, io.EOF) {
			break
		}
		n++
		if perr := a.parseLine(raw, n, &user); perr != nil {
			return nil, perr
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if a.anon != nil {
		a.anon.buildIndex()
	}
	for _, l := range a.users {
		l.buildIndex()
	}
	a.patterns.buildIndex()
	return a, nil
}

var errLongLine = errors.New("line too long")

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// readLine returns one line without its newline; err is io.EOF at the end.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > maxACLLine+1 {
			return nil, errLongLine
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == nil {
			return buf[:len(buf)-1], nil
		}
		return buf, err
	}
}

func (a *ACLFile) parseLine(raw []byte, n int, user **aclList) error {
	where := a.name + ":" + strconv.Itoa(n)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("authz: %s: "+format, append([]any{where}, args...)...)
	}
	if bytes.IndexByte(raw, 0) >= 0 {
		return bad("line contains a NUL byte")
	}
	line := strings.TrimRightFunc(string(raw), isCSpace)
	if strings.HasPrefix(line, "#") {
		return nil
	}
	// Mosquitto splits on spaces only: a tab is part of a word.
	rest := strings.TrimLeft(line, " ")
	if rest == "" {
		return nil
	}
	keyword, rest, _ := strings.Cut(rest, " ")
	switch keyword {
	case "topic", "pattern":
		rest = strings.TrimLeft(rest, " ")
		if rest == "" {
			return bad("%s line without a topic (want \"%s [read|write|readwrite|deny] TOPIC\")", keyword, keyword)
		}
		word, topic, hasTopic := strings.Cut(rest, " ")
		topic = strings.TrimFunc(topic, isCSpace)
		var access uint8
		if !hasTopic || topic == "" {
			// One word: it is the topic, with read and write access.
			topic, access = word, accessRead|accessWrite
		} else {
			switch word {
			case "read":
				access = accessRead
			case "write":
				access = accessWrite
			case "readwrite":
				access = accessRead | accessWrite
			case "deny":
				access = accessNone
			default:
				return bad("invalid access %q (want read, write, readwrite or deny)", word)
			}
		}
		syn := literal // %u and %c are literal on topic lines
		if keyword == "pattern" {
			syn = mosquitto
		}
		p, err := compilePattern(topic, syn)
		if err != nil {
			return bad("invalid topic %q: %v", clip(topic), err)
		}
		e := aclLine{p: p, access: access, rule: where,
			allow: where + ": " + keyword + " " + accessName(access) + " " + clip(topic) + " grants",
			deny:  where + ": " + keyword + " deny " + clip(topic) + " denies"}
		switch {
		case keyword == "pattern":
			a.patterns.add(e)
		case *user == nil:
			if a.anon == nil {
				a.anon = &aclList{}
			}
			a.anon.add(e)
		default:
			(*user).add(e)
		}
		return nil
	case "user":
		name := strings.TrimFunc(rest, isCSpace)
		if name == "" {
			return bad("user line without a username")
		}
		l, ok := a.users[name]
		if !ok {
			l = &aclList{}
			a.users[name] = l
		}
		*user = l
		return nil
	}
	return bad("invalid line %q (want user, topic, pattern or a # comment)", clip(line))
}

func accessName(a uint8) string {
	switch a {
	case accessRead:
		return "read"
	case accessWrite:
		return "write"
	case accessRead | accessWrite:
		return "readwrite"
	}
	return "deny"
}

// isCSpace is C's isspace in the "C" locale, which Mosquitto trims with.
func isCSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\v' || r == '\f' || r == '\r'
}

// clip shortens a string from a file for an error message or reason.
func clip(s string) string {
	const max = 200
	if len(s) <= max {
		return strconv.Quote(s)[1 : len(strconv.Quote(s))-1]
	}
	return strconv.Quote(s[:max])[1:len(strconv.Quote(s[:max]))-1] + "..."
}

// decide applies the file to req. ok is false when no line decided, so
// that the caller may consult the credential's grants.
func (a *ACLFile) decide(req *Request) (Decision, bool) {
	s, t := req.Subject, req.Topic
	if t == "" {
		return Decision{Reason: a.name + ": empty topic", Rule: a.name}, true
	}
	switch req.Action {
	case Publish:
		if strings.HasPrefix(t, "$SYS") {
			return Decision{Reason: "publishing to $SYS topics is reserved to the broker", Rule: a.name}, true
		}
		if strings.HasPrefix(t, "$share") {
			return Decision{Reason: "$share topics are for subscriptions only", Rule: a.name}, true
		}
	case Receive:
		if strings.HasPrefix(t, "$share") {
			return Decision{Reason: "$share topics are for subscriptions only", Rule: a.name}, true
		}
	case Subscribe:
		return a.decideSubscribe(req)
	}
	want := uint8(accessRead)
	if req.Action == Publish {
		want = accessWrite
	}
	if l := a.list(s); l != nil {
		if d, ok := l.check(s, t, want); ok {
			return d, true
		}
	}
	if len(a.patterns.lines) == 0 {
		return Decision{}, false
	}
	if d, bad := a.dangerous(s); bad {
		return d, true
	}
	return a.patterns.check(s, t, want)
}

// list returns the lines for the subject's username (the anonymous section
// for clients without one).
func (a *ACLFile) list(s *Subject) *aclList {
	if u := s.username(); u != "" {
		return a.users[u]
	}
	return a.anon
}

// dangerous refuses identities with wildcards once patterns are involved,
// as Mosquitto 2.0 does.
func (a *ACLFile) dangerous(s *Subject) (Decision, bool) {
	if strings.ContainsAny(s.username(), "+#") {
		return Decision{Reason: a.name + ": username contains '+' or '#'; pattern lines deny it", Rule: a.name}, true
	}
	if strings.ContainsAny(s.ClientID, "+#") {
		return Decision{Reason: a.name + ": client ID contains '+' or '#'; pattern lines deny it", Rule: a.name}, true
	}
	return Decision{}, false
}

// decideSubscribe allows a filter when some read grant can let the client
// receive a message it matches, that is when the grant's topic intersects
// the filter and no deny line checked before that grant covers the whole
// intersection. Each delivered message is still checked with Receive.
func (a *ACLFile) decideSubscribe(req *Request) (Decision, bool) {
	s, f := req.Subject, req.Topic
	if ValidFilter(f) != nil {
		return Decision{Reason: "invalid topic filter", Rule: a.name}, true
	}
	if strings.HasPrefix(f, "$share") {
		return Decision{Reason: "$share topics are for subscriptions only", Rule: a.name}, true
	}
	var denies []string // deny filters checked before the grant at hand
	if l := a.list(s); l != nil {
		for i := range l.lines {
			e := &l.lines[i]
			if e.access == accessNone {
				denies = append(denies, e.p.src)
				continue
			}
			if e.access&accessRead != 0 && readable(e.p.src, f, denies) {
				return Decision{Allow: true, Reason: e.allow + " read on part of the filter", Rule: e.rule}, true
			}
		}
	}
	if len(a.patterns.lines) == 0 {
		return Decision{}, false
	}
	if d, bad := a.dangerous(s); bad {
		return d, true
	}
	for i := range a.patterns.lines {
		e := &a.patterns.lines[i]
		for _, g := range e.p.expand(s) {
			if f[0] == '$' && !e.p.dollar {
				continue
			}
			if e.access == accessNone {
				denies = append(denies, g)
				continue
			}
			if e.access&accessRead != 0 && readable(g, f, denies) {
				return Decision{Allow: true, Reason: e.allow + " read on part of the filter", Rule: e.rule}, true
			}
		}
	}
	return Decision{}, false
}

// readable reports whether grant g leaves some topic of filter f that none
// of the deny filters covers. A deny that covers the intersection entirely
// makes it unreadable; several denies that together cover it are not
// detected (the subscription is then allowed and every delivery denied).
func readable(g, f string, denies []string) bool {
	in, ok := Intersection(g, f)
	if !ok {
		return false
	}
	for _, d := range denies {
		if Covers(d, in) {
			return false
		}
	}
	return true
}
