package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"

	"go.yaml.in/yaml/v3"
)

// Authentication backend types (AuthBackend.Type).
const (
	AuthPasswordFile  = "password_file" // a mosquitto_passwd or moat passwd file
	AuthLDAP          = "ldap"          // simple bind against a directory
	AuthJWT           = "jwt"           // a JSON Web Token as the password
	AuthIntrospection = "introspection" // an OAuth 2.0 token checked by RFC 7662 introspection
	AuthSCRAM         = "scram"         // SCRAM credentials for MQTT 5 enhanced authentication
)

var authTypes = []string{AuthPasswordFile, AuthLDAP, AuthJWT, AuthIntrospection, AuthSCRAM}

// AuthBackend is one entry of an auth list: a backend of a listener's
// authentication chain. Type selects the backend; the other keys are the
// backend's own (docs/access-control.md) and are decoded strictly, with
// unknown keys refused, by the start-up plan through Decode.
type AuthBackend struct {
	// Type is password_file, ldap, jwt, introspection or scram. Required.
	Type string `json:"type"`
	// Path is the file of a password_file or scram backend.
	Path string `json:"path,omitempty"`

	node *yaml.Node // the YAML mapping, nil for mosquitto.conf
}

// UnmarshalYAML implements yaml.Unmarshaler. It reads type and path and
// keeps the mapping for Decode.
func (b *AuthBackend) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return typeErr(n, "an auth entry must be a mapping with a type (%s)", joinOr(authTypes))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "type", "path":
			if v.Kind != yaml.ScalarNode {
				return typeErr(v, "auth %s must be a string", k.Value)
			}
			if k.Value == "type" {
				b.Type = v.Value
			} else {
				b.Path = v.Value
			}
		}
	}
	b.node = n
	return nil
}

// Decode decodes the entry's YAML mapping into v, refusing keys v does not
// have, so that a misspelt option is an error rather than ignored. An
// entry from a mosquitto.conf has only type and path.
func (b *AuthBackend) Decode(v any) error {
	if b.node == nil {
		n := &yaml.Node{Kind: yaml.MappingNode}
		for _, kv := range [][2]string{{"type", b.Type}, {"path", b.Path}} {
			if kv[1] != "" {
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: kv[0]}, &yaml.Node{Kind: yaml.ScalarNode, Value: kv[1]})
			}
		}
		return decodeNodeStrict(n, v)
	}
	return decodeNodeStrict(b.node, v)
}

// ACL is the access policy section (acl: in YAML). Its rules are decoded by
// the start-up plan into the policy engine's structures (Decode, strict).
type ACL struct {
	// File is a Mosquitto acl_file (acl.acl_file in YAML, acl_file in
	// mosquitto.conf), consulted after the rules.
	File string `json:"acl_file,omitempty"`
	// AllowAll (acl.allow_all: true in YAML) turns access control off:
	// every client a listener admits may publish and subscribe to every
	// topic, as Mosquitto without an acl_file. Only an explicit opt-out
	// does this; the broker warns at every start.
	AllowAll bool `json:"allow_all,omitempty"`

	node *yaml.Node
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (a *ACL) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return typeErr(n, "acl must be a mapping with rules and/or acl_file")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k, v := n.Content[i], n.Content[i+1]; k.Value {
		case "acl_file":
			if v.Kind != yaml.ScalarNode {
				return typeErr(v, "acl.acl_file must be a file name")
			}
			a.File = v.Value
		case "allow_all":
			if err := v.Decode(&a.AllowAll); err != nil {
				return typeErr(v, "acl.allow_all must be true or false")
			}
		}
	}
	a.node = n
	return nil
}

// Decode decodes the section into v strictly (unknown keys are errors).
func (a *ACL) Decode(v any) error {
	if a.node == nil {
		n := &yaml.Node{Kind: yaml.MappingNode}
		if a.File != "" {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "acl_file"}, &yaml.Node{Kind: yaml.ScalarNode, Value: a.File})
		}
		return decodeNodeStrict(n, v)
	}
	return decodeNodeStrict(a.node, v)
}

var unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type`)

// decodeNodeStrict decodes n into v with unknown keys refused. The YAML
// library checks unknown keys only when decoding text, so the node is
// written out and read back; errors then name the key, not the line.
func decodeNodeStrict(n *yaml.Node, v any) error {
	data, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			var errs []error
			for _, e := range te.Errors {
				m := yamlLineRE.FindStringSubmatch(e)
				if m != nil {
					e = m[2]
				}
				if u := unknownFieldRE.FindStringSubmatch(e); u != nil {
					e = fmt.Sprintf("unknown key %q", u[1])
				}
				errs = append(errs, errors.New(e))
			}
			return errors.Join(errs...)
		}
		return err
	}
	return nil
}

// validateAuth checks an auth list at path ("auth", "listeners[0].auth").
func (c *Config) validateAuth(path string, list []AuthBackend) []error {
	var errs []error
	for i, b := range list {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case b.Type == "":
			errs = append(errs, c.errAt(p+".type", p, "%s: type is required (%s)", p, joinOr(authTypes)))
		case !slices.Contains(authTypes, b.Type):
			errs = append(errs, c.errAt(p+".type", p, "%s.type: unknown backend %q (want %s)", p, b.Type, joinOr(authTypes)))
		case b.Type == AuthPasswordFile && b.Path == "":
			errs = append(errs, c.errAt(p+".path", p, "%s: a password_file backend needs path", p))
		case b.Type == AuthSCRAM && b.Path == "":
			errs = append(errs, c.errAt(p+".path", p, "%s: a scram backend needs path (a file made by moat scram add)", p))
		}
	}
	return errs
}

// errAt returns an *Error at the line of path (or of fallback).
func (c *Config) errAt(path, fallback, format string, args ...any) error {
	pos := c.Pos(path)
	if pos == c.Source {
		pos = c.Pos(fallback)
	}
	file, line := splitPos(pos)
	return &Error{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
}

func joinOr(list []string) string {
	if len(list) < 2 {
		return fmt.Sprint(list)
	}
	out := ""
	for i, s := range list {
		switch {
		case i == 0:
		case i == len(list)-1:
			out += " or "
		default:
			out += ", "
		}
		out += s
	}
	return out
}
