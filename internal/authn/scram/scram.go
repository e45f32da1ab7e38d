// Package scram implements SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802,
// RFC 7677) for MQTT 5 enhanced authentication: the server side that the
// broker drives packet by packet (Server, Conversation), the client side
// that the public client wraps (Client), stored credentials (Credential)
// and the credentials file (File).
//
// The server never holds passwords, only the salted keys of RFC 5802
// (StoredKey and ServerKey), so a leaked credentials file does not reveal
// them and cannot be replayed as a password. Channel binding is not
// supported: clients must send the GS2 header "n,," (or "y,,", which says
// the client could bind but believes the server cannot, and is true).
//
// Passwords are prepared with a minimal SASLprep (RFC 4013): printable
// ASCII passes unchanged, as the full profile would leave it, and
// everything else is refused, because Moat does not carry the Unicode
// tables needed to normalize it.
package scram

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
)

// Mechanism is a SCRAM variant. The zero value is no mechanism.
type Mechanism int

// Supported mechanisms.
const (
	SHA256 Mechanism = iota + 1 // SCRAM-SHA-256 (RFC 7677)
	SHA512                      // SCRAM-SHA-512
)

// Mechanisms lists the supported mechanisms.
var Mechanisms = []Mechanism{SHA256, SHA512}

// String returns the mechanism's name as used in the MQTT Authentication
// Method and in the credentials file.
func (m Mechanism) String() string {
	switch m {
	case SHA256:
		return "SCRAM-SHA-256"
	case SHA512:
		return "SCRAM-SHA-512"
	}
	return fmt.Sprintf("scram.Mechanism(%d)", int(m))
}

// ParseMechanism returns the mechanism named name, exactly as written
// ("SCRAM-SHA-256" or "SCRAM-SHA-512"; MQTT methods are case-sensitive).
// Other names, including the channel-binding "-PLUS" variants, give an
// error wrapping ErrUnknownMechanism.
func ParseMechanism(name string) (Mechanism, error) {
	for _, m := range Mechanisms {
		if name == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w %s: Moat supports SCRAM-SHA-256 and SCRAM-SHA-512 (without channel binding)", ErrUnknownMechanism, clip(name))
}

func (m Mechanism) newHash() func() hash.Hash {
	if m == SHA512 {
		return sha512.New
	}
	return sha256.New
}

// size is the length of the mechanism's keys, proofs and signatures.
func (m Mechanism) size() int {
	if m == SHA512 {
		return sha512.Size
	}
	return sha256.Size
}

func (m Mechanism) valid() bool { return m == SHA256 || m == SHA512 }

// Limits.
const (
	// MinIterations is the smallest iteration count accepted by default,
	// as RFC 7677 requires for SCRAM-SHA-256.
	MinIterations = 4096
	// DefaultIterations is the iteration count NewCredential uses when
	// given 0.
	DefaultIterations = MinIterations
	// MaxIterations bounds the iteration count everywhere: in the
	// credentials file, and what a client agrees to compute for a server.
	MaxIterations = 10_000_000
	// DefaultSaltSize is the salt length, in bytes, of new credentials.
	DefaultSaltSize = 16
	// MaxMessage is the longest SCRAM message accepted from a peer.
	MaxMessage = 4096
	// MaxUsername is the longest username, in bytes (unescaped).
	MaxUsername = 1024
	// MaxPassword is the longest password, in bytes.
	MaxPassword = 1024
	// maxNonce bounds a nonce's length, client and server parts together.
	maxNonce = 512
	// minSalt and maxSalt bound a salt's length in bytes.
	minSalt, maxSalt = 8, 128
	// nonceLen is the number of characters of a nonce part we make.
	nonceLen = 24
)

// Errors. Step and the client methods wrap these; the broker tells them
// apart with errors.Is.
var (
	// ErrUnknownMechanism: the Authentication Method is not a SCRAM
	// mechanism Moat supports (MQTT reason 0x8C Bad authentication
	// method).
	ErrUnknownMechanism = errors.New("scram: unknown mechanism")
	// ErrAuthFailed: the proof does not verify (wrong password or unknown
	// user; the two are indistinguishable to the peer).
	ErrAuthFailed = errors.New("scram: authentication failed")
	// ErrMalformed: a message does not follow RFC 5802's grammar, is too
	// long, or uses a feature Moat does not support (channel binding,
	// authorization identity, mandatory extensions).
	ErrMalformed = errors.New("scram: malformed message")
	// ErrOutOfOrder: a step came after the conversation ended or failed.
	ErrOutOfOrder = errors.New("scram: message out of order")
	// ErrUserChanged: a re-authentication named another user than the
	// connection's.
	ErrUserChanged = errors.New("scram: re-authentication as a different user")
	// ErrServerProof: the server's signature does not verify; the server
	// does not know the credential (client side).
	ErrServerProof = errors.New("scram: the server failed to prove it knows the credential")
	// ErrUnknownUser is returned by a CredentialLookup that has no
	// credential for the user and mechanism.
	ErrUnknownUser = errors.New("scram: unknown user")
)

// Password preparation.

// PreparePassword applies Moat's SASLprep profile (RFC 4013) to password:
// printable ASCII (0x20–0x7E) is returned unchanged, as full SASLprep
// would; control characters are prohibited by SASLprep and refused;
// non-ASCII is refused because Moat does not implement the Unicode
// mapping and normalization tables.
func PreparePassword(password []byte) (string, error) {
	if len(password) == 0 {
		return "", errors.New("scram: empty password")
	}
	if len(password) > MaxPassword {
		return "", fmt.Errorf("scram: the password is %d bytes long; at most %d", len(password), MaxPassword)
	}
	for _, b := range password {
		switch {
		case b >= 0x80:
			return "", errors.New("scram: the password contains non-ASCII characters; Moat prepares passwords (SASLprep, RFC 4013) only for printable ASCII, so choose an ASCII password")
		case b < 0x20 || b == 0x7f:
			return "", errors.New("scram: the password contains a control character, which SASLprep prohibits")
		}
	}
	return string(password), nil
}

// Key derivation (RFC 5802 §3).

type keys struct {
	clientKey, storedKey, serverKey []byte
}

func deriveKeys(m Mechanism, prepared string, salt []byte, iter int) (keys, error) {
	sp, err := pbkdf2.Key(m.newHash(), prepared, salt, iter, m.size())
	if err != nil {
		return keys{}, fmt.Errorf("scram: deriving the salted password: %w", err)
	}
	ck := hmacSum(m, sp, "Client Key")
	h := m.newHash()()
	h.Write(ck)
	return keys{clientKey: ck, storedKey: h.Sum(nil), serverKey: hmacSum(m, sp, "Server Key")}, nil
}

func hmacSum(m Mechanism, key []byte, msg string) []byte {
	h := hmac.New(m.newHash(), key)
	io.WriteString(h, msg)
	return h.Sum(nil)
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

// Nonces.

// isNonceChar reports whether c is a printable character other than ','
// (RFC 5802's "printable").
func isNonceChar(c byte) bool { return c >= 0x21 && c <= 0x7e && c != ',' }

// makeNonce reads n nonce characters from r, keeping the bytes that are
// printable and drawing again for the rest (each kept character carries
// log2(93) ≈ 6.5 bits).
func makeNonce(r io.Reader, n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n)
	for len(out) < n {
		need := buf[:n-len(out)]
		if _, err := io.ReadFull(r, need); err != nil {
			return "", fmt.Errorf("scram: reading randomness for a nonce: %w", err)
		}
		for _, c := range need {
			if isNonceChar(c) {
				out = append(out, c)
			}
		}
	}
	return string(out), nil
}

// clip quotes a peer-controlled string for an error message, shortened.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strconv.Quote(s)
}
