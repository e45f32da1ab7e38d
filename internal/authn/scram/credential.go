package scram

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// Credential is what the server stores for one user and mechanism (RFC
// 5802 §3): never the password. StoredKey and ServerKey are secrets (with
// them, a recorded exchange lets one impersonate the client, and ServerKey
// lets one impersonate the server), so a Credential redacts them when
// printed or logged.
type Credential struct {
	Mechanism  Mechanism
	Iterations int
	Salt       []byte
	StoredKey  []byte // H(HMAC(SaltedPassword, "Client Key"))
	ServerKey  []byte // HMAC(SaltedPassword, "Server Key")
}

// NewCredential derives the stored credential of password for mech with
// a fresh DefaultSaltSize-byte salt read from r (nil: crypto/rand).
// iterations 0 means DefaultIterations; fewer than MinIterations or more
// than MaxIterations is an error. The password is prepared with
// PreparePassword (printable ASCII only).
func NewCredential(mech Mechanism, password []byte, iterations int, r io.Reader) (Credential, error) {
	if !mech.valid() {
		return Credential{}, fmt.Errorf("%w: %s", ErrUnknownMechanism, mech)
	}
	if iterations == 0 {
		iterations = DefaultIterations
	}
	if iterations < MinIterations || iterations > MaxIterations {
		return Credential{}, fmt.Errorf("scram: %d iterations; want %d to %d (RFC 7677 requires at least %d)", iterations, MinIterations, MaxIterations, MinIterations)
	}
	prepared, err := PreparePassword(password)
	if err != nil {
		return Credential{}, err
	}
	if r == nil {
		r = rand.Reader
	}
	salt := make([]byte, DefaultSaltSize)
	if _, err := io.ReadFull(r, salt); err != nil {
		return Credential{}, fmt.Errorf("scram: reading randomness for the salt: %w", err)
	}
	k, err := deriveKeys(mech, prepared, salt, iterations)
	if err != nil {
		return Credential{}, err
	}
	return Credential{Mechanism: mech, Iterations: iterations, Salt: salt, StoredKey: k.storedKey, ServerKey: k.serverKey}, nil
}

// validate checks the credential's shape; minIter is the smallest
// iteration count accepted.
func (c Credential) validate(minIter int) error {
	switch {
	case !c.Mechanism.valid():
		return fmt.Errorf("%w: %s", ErrUnknownMechanism, c.Mechanism)
	case c.Iterations < minIter || c.Iterations > MaxIterations:
		return fmt.Errorf("%d iterations; want %d to %d", c.Iterations, minIter, MaxIterations)
	case len(c.Salt) < minSalt || len(c.Salt) > maxSalt:
		return fmt.Errorf("salt of %d bytes; want %d to %d", len(c.Salt), minSalt, maxSalt)
	case len(c.StoredKey) != c.Mechanism.size() || len(c.ServerKey) != c.Mechanism.size():
		return fmt.Errorf("keys must be %d bytes for %s", c.Mechanism.size(), c.Mechanism)
	}
	return nil
}

// line returns the credentials-file line of user.
func (c Credential) line(user string) string {
	return user + ":" + c.Mechanism.String() + ":" + strconv.Itoa(c.Iterations) + ":" +
		b64.EncodeToString(c.Salt) + ":" + b64.EncodeToString(c.StoredKey) + ":" + b64.EncodeToString(c.ServerKey)
}

func (c Credential) String() string {
	return fmt.Sprintf("%s credential (%d iterations, keys %s)", c.Mechanism, c.Iterations, redacted)
}

// GoString redacts the keys in %#v.
func (c Credential) GoString() string { return "scram.Credential{" + c.String() + "}" }

// LogValue implements slog.LogValuer.
func (c Credential) LogValue() slog.Value { return slog.StringValue(c.String()) }

const redacted = "[REDACTED]"
