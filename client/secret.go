package client

import (
	"crypto/subtle"
	"log/slog"
)

// Secret holds a password or token. It redacts itself when printed or
// logged (fmt %v, %s, %#v, slog) and cannot be compared with ==; use
// Equal, which runs in constant time. The zero value is the empty secret.
type Secret struct {
	b []byte // never printed
	_ [0]func()
}

// NewSecret returns a Secret holding a copy of b.
func NewSecret(b []byte) Secret { return Secret{b: append([]byte(nil), b...)} }

// Bytes returns the secret's value. The caller must not modify or log it.
func (s Secret) Bytes() []byte { return s.b }

// Empty reports whether the secret has no value.
func (s Secret) Empty() bool { return len(s.b) == 0 }

// Equal reports in constant time whether s and o hold the same value.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s.b, o.b) == 1 }

const redacted = "[REDACTED]"

func (s Secret) String() string   { return redacted }
func (s Secret) GoString() string { return "client.Secret{" + redacted + "}" }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText implements encoding.TextMarshaler, so JSON and YAML output
// redact the secret too.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
