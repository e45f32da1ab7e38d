package authz

import (
	"fmt"
	"strings"
)

// variable is a substitution in a topic pattern.
type variable uint8

const (
	varNone variable = iota
	varUser
	varClient
	varCN
	varSPIFFE
	varIssuer
	// Multi-valued: a pattern matches if it matches with any one value.
	varO
	varOU
	varDNS
	varURI
	varEmail
)

// braceVars maps the names usable as %{name} in Moat rules.
var braceVars = map[string]variable{
	"username": varUser, "client_id": varClient, "cn": varCN, "spiffe": varSPIFFE, "issuer": varIssuer,
	"o": varO, "ou": varOU, "san_dns": varDNS, "san_uri": varURI, "san_email": varEmail,
}

// slashOK reports whether values of v may contain '/': URIs are
// hierarchical by nature and come only from a verified certificate. Any
// other value with a '/' would reach into another identity's topic tree
// ("a/b" under devices/%u/# lands inside devices/a/#), so it never matches.
func (v variable) slashOK() bool { return v == varSPIFFE || v == varURI }

// single returns the value of a single-valued variable.
func (v variable) single(s *Subject) string {
	switch v {
	case varUser:
		return s.username()
	case varClient:
		return s.ClientID
	case varCN:
		return s.Cert.CN
	case varSPIFFE:
		return s.Cert.SPIFFE
	case varIssuer:
		return s.Cert.Issuer
	}
	return ""
}

// multi returns the values of a multi-valued variable.
func (v variable) multi(s *Subject) []string {
	switch v {
	case varO:
		return s.Cert.O
	case varOU:
		return s.Cert.OU
	case varDNS:
		return s.Cert.DNS
	case varURI:
		return s.Cert.URI
	case varEmail:
		return s.Cert.Email
	}
	return nil
}

// safeValue reports whether a substituted identity value may take part in
// a match: it is not empty, has no wildcard (an identity "+" would match
// every client's topics) and no '/' unless the variable allows it.
func safeValue(v string, slashOK bool) bool {
	if v == "" || strings.ContainsAny(v, "+#\x00") {
		return false
	}
	return slashOK || strings.IndexByte(v, '/') < 0
}

type levelKind uint8

const (
	kLit levelKind = iota
	kPlus
	kHash
	kTmpl
)

type seg struct {
	lit string
	v   variable // varNone: lit
}

type plevel struct {
	kind levelKind
	lit  string
	segs []seg // kTmpl
}

// pattern is a compiled topic filter that may contain substitutions.
type pattern struct {
	src    string
	levels []plevel
	vars   bool // has substitutions
	dollar bool // the written pattern starts with '$'
}

// syntax selects the substitutions a pattern may use.
type syntax uint8

const (
	literal   syntax = iota // no substitution (acl_file topic lines)
	mosquitto               // %u and %c (acl_file pattern lines)
	moat                    // %u, %c and %{name} (Moat rules)
)

// compilePattern compiles a topic filter. Any '%' that does not start a
// substitution of the syntax is literal, as in Mosquitto.
func compilePattern(src string, syn syntax) (*pattern, error) {
	if err := ValidFilter(src); err != nil {
		return nil, err
	}
	p := &pattern{src: src, dollar: src[0] == '$'}
	rest := src
	for {
		l, r, more := cutLevel(rest)
		pl, err := compileLevel(l, syn)
		if err != nil {
			return nil, err
		}
		if pl.kind == kTmpl {
			p.vars = true
		}
		p.levels = append(p.levels, pl)
		if !more {
			break
		}
		rest = r
	}
	return p, nil
}

func compileLevel(l string, syn syntax) (plevel, error) {
	switch l {
	case "+":
		return plevel{kind: kPlus}, nil
	case "#":
		return plevel{kind: kHash}, nil
	}
	if syn == literal || !strings.Contains(l, "%") {
		return plevel{kind: kLit, lit: l}, nil
	}
	var segs []seg
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			segs = append(segs, seg{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(l); i++ {
		if l[i] != '%' || i == len(l)-1 {
			lit.WriteByte(l[i])
			continue
		}
		switch c := l[i+1]; {
		case c == 'u':
			flush()
			segs = append(segs, seg{v: varUser})
			i++
		case c == 'c':
			flush()
			segs = append(segs, seg{v: varClient})
			i++
		case c == '{' && syn == moat:
			end := strings.IndexByte(l[i:], '}')
			if end < 0 {
				return plevel{}, fmt.Errorf("unterminated %%{ in %q", l)
			}
			name := l[i+2 : i+end]
			v, ok := braceVars[name]
			if !ok {
				return plevel{}, fmt.Errorf("unknown substitution %%{%s} (known: username, client_id, cn, o, ou, san_dns, san_uri, san_email, spiffe, issuer)", name)
			}
			flush()
			segs = append(segs, seg{v: v})
			i += end
		default:
			lit.WriteByte('%')
		}
	}
	flush()
	if len(segs) == 1 && segs[0].v == varNone {
		return plevel{kind: kLit, lit: segs[0].lit}, nil
	}
	return plevel{kind: kTmpl, segs: segs}, nil
}

// match reports whether topic name t matches the pattern for subject s.
// A topic starting with '$' matches only a pattern written with a leading
// '$': no substitution can make a pattern reach '$' topics.
func (p *pattern) match(s *Subject, t string) bool {
	if t == "" || (t[0] == '$' && !p.dollar) {
		return false
	}
	return matchLevels(p.levels, t, false, s)
}

// matchLevels matches levels against the topic levels in t; end reports
// that the topic has no level left.
func matchLevels(lv []plevel, t string, end bool, s *Subject) bool {
	for {
		if len(lv) == 0 {
			return end
		}
		l := lv[0]
		if l.kind == kHash {
			return true
		}
		if end {
			return false
		}
		if l.kind == kTmpl {
			return matchSegs(l.segs, lv[1:], t, s)
		}
		tl, rest, more := cutLevel(t)
		if l.kind == kLit && tl != l.lit {
			return false
		}
		lv, t, end = lv[1:], rest, !more
	}
}

// matchSegs matches the segments of a template level at the start of t,
// then the remaining levels.
func matchSegs(segs []seg, next []plevel, t string, s *Subject) bool {
	if len(segs) == 0 {
		if t == "" {
			return matchLevels(next, "", true, s)
		}
		if t[0] != '/' {
			return false
		}
		return matchLevels(next, t[1:], false, s)
	}
	sg := segs[0]
	if sg.v == varNone {
		return strings.HasPrefix(t, sg.lit) && matchSegs(segs[1:], next, t[len(sg.lit):], s)
	}
	if sg.v < varO {
		v := sg.v.single(s)
		return safeValue(v, sg.v.slashOK()) && strings.HasPrefix(t, v) && matchSegs(segs[1:], next, t[len(v):], s)
	}
	for _, v := range sg.v.multi(s) {
		if safeValue(v, sg.v.slashOK()) && strings.HasPrefix(t, v) && matchSegs(segs[1:], next, t[len(v):], s) {
			return true
		}
	}
	return false
}

// maxExpansions bounds the filters one pattern expands to for a subject
// with many multi-valued certificate fields.
const maxExpansions = 64

// expand returns the concrete filters the pattern stands for with subject
// s (one unless it uses multi-valued fields). Values that are unsafe, and
// results that would start with '$' when the pattern was not written so,
// are left out.
func (p *pattern) expand(s *Subject) []string {
	if !p.vars {
		return []string{p.src}
	}
	outs := []string{""}
	for i, l := range p.levels {
		sep := "/"
		if i == 0 {
			sep = ""
		}
		var next []string
		switch l.kind {
		case kLit:
			next = appendAll(outs, sep+l.lit)
		case kPlus:
			next = appendAll(outs, sep+"+")
		case kHash:
			next = appendAll(outs, sep+"#")
		case kTmpl:
			next = appendAll(outs, sep)
			for _, sg := range l.segs {
				if sg.v == varNone {
					next = appendAll(next, sg.lit)
					continue
				}
				var vals []string
				if sg.v < varO {
					vals = []string{sg.v.single(s)}
				} else {
					vals = sg.v.multi(s)
				}
				var grown []string
				for _, o := range next {
					for _, v := range vals {
						if safeValue(v, sg.v.slashOK()) && len(grown) < maxExpansions {
							grown = append(grown, o+v)
						}
					}
				}
				next = grown
			}
		}
		outs = next
	}
	res := outs[:0]
	for _, o := range outs {
		if (o != "" && o[0] == '$' && !p.dollar) || ValidFilter(o) != nil {
			continue
		}
		res = append(res, o)
	}
	return res
}

func appendAll(ss []string, suffix string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s + suffix
	}
	return out
}
