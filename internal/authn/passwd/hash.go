package passwd

import (
	"crypto/fips140"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Scheme is a password hashing scheme found in a password file.
type Scheme int

// Schemes, in the order of their strength.
const (
	// SHA512 is Mosquitto 1.x's "$6$salt$hash": one SHA-512 over the
	// password followed by the salt. Read for compatibility only.
	SHA512 Scheme = 6
	// PBKDF2 is Mosquitto 2.0's "$7$iterations$salt$hash":
	// PBKDF2-HMAC-SHA512 with a 64-byte output.
	PBKDF2 Scheme = 7
	// Argon2id is the PHC string "$argon2id$v=19$m=M,t=T,p=P$salt$hash"
	// that libargon2 writes and Mosquitto 2.1 stores. moat passwd writes it.
	Argon2id Scheme = 8
)

func (s Scheme) String() string {
	switch s {
	case SHA512:
		return "sha512"
	case PBKDF2:
		return "pbkdf2-sha512"
	case Argon2id:
		return "argon2id"
	}
	return "unknown"
}

// Limits on what a password file may ask of the broker. Each verification
// runs once per CONNECT, so a file with absurd costs would let any client
// with a username make the broker spend seconds or gigabytes.
const (
	// MaxArgon2Memory is the largest argon2 memory parameter accepted, in
	// KiB (256 MiB).
	MaxArgon2Memory = 256 << 10
	// MaxArgon2Time is the largest argon2 time (passes) parameter.
	MaxArgon2Time = 16
	// MaxArgon2Threads is the largest argon2 parallelism parameter.
	MaxArgon2Threads = 16
	// MaxPBKDF2Iterations is the largest $7$ iteration count accepted.
	MaxPBKDF2Iterations = 1_000_000

	maxHashText = 1024 // longest hash field
	minSalt     = 8
	maxSalt     = 256
	minSum      = 16
	maxSum      = 256
	sha512Size  = 64
)

// Parameters moat passwd writes. Argon2id follows RFC 9106's and OWASP's
// memory-constrained choice (19 MiB, 2 passes, 1 lane), which keeps a burst
// of connections affordable. PBKDF2 (written in FIPS 140 mode) uses OWASP's
// iteration count for HMAC-SHA512 and a 64-byte salt: FIPS wants at least
// 16 bytes, and Mosquitto 2.1 reads 12 or 64 (Mosquitto 2.0 only 12).
const (
	writeArgon2Memory = 19 << 10
	writeArgon2Time   = 2
	writeArgon2Par    = 1
	writeArgon2Salt   = 16
	writeArgon2Sum    = 32
	writePBKDF2Iter   = 210_000
	writePBKDF2Salt   = 64
)

var (
	b64    = base64.StdEncoding.Strict()
	b64Raw = base64.RawStdEncoding.Strict()
)

// hash is one parsed password hash. It is immutable once parsed.
type hash struct {
	scheme Scheme
	iter   uint32 // PBKDF2 iterations or argon2 passes
	mem    uint32 // argon2 memory in KiB
	par    uint8  // argon2 lanes
	salt   []byte
	sum    []byte
}

// params identifies the cost of verifying h: two hashes with equal params
// take the same work to check.
type params struct {
	scheme          Scheme
	iter, mem       uint32
	par             uint8
	saltLen, sumLen int
}

func (h *hash) params() params {
	return params{h.scheme, h.iter, h.mem, h.par, len(h.salt), len(h.sum)}
}

// cost is a rough, comparable measure of the work of one verification.
func (p params) cost() uint64 {
	switch p.scheme {
	case Argon2id:
		return uint64(p.mem) * uint64(p.iter) * 64 // ~ PBKDF2 rounds per KiB pass
	case PBKDF2:
		return uint64(p.iter)
	}
	return 1
}

var errPlain = errors.New("not a hash")

// parseHash parses the hash field of a password file line. It accepts
// exactly what it would write back (canonical base64, decimal numbers
// without leading zeros), so parse → encode is the identity.
func parseHash(s string) (*hash, error) {
	if len(s) > maxHashText {
		return nil, fmt.Errorf("hash is %d bytes long; at most %d", len(s), maxHashText)
	}
	switch {
	case strings.HasPrefix(s, "$6$"):
		return parseSHA512(s[3:])
	case strings.HasPrefix(s, "$7$"):
		return parsePBKDF2(s[3:])
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s[len("$argon2id$"):])
	case strings.HasPrefix(s, "$argon2i$"), strings.HasPrefix(s, "$argon2d$"):
		return nil, errors.New("argon2i and argon2d hashes are not supported; only argon2id")
	case strings.HasPrefix(s, "$"):
		return nil, errors.New("unknown hash scheme; want $6$, $7$ or $argon2id$")
	}
	return nil, errPlain
}

func parseSHA512(s string) (*hash, error) {
	f := strings.Split(s, "$")
	if len(f) != 2 {
		return nil, errors.New("$6$ hash: want $6$salt$hash")
	}
	h := &hash{scheme: SHA512}
	var err error
	if h.salt, err = decodeSalt(b64, f[0]); err != nil {
		return nil, fmt.Errorf("$6$ hash: %w", err)
	}
	if h.sum, err = decodeSum(b64, f[1], sha512Size); err != nil {
		return nil, fmt.Errorf("$6$ hash: %w", err)
	}
	return h, nil
}

func parsePBKDF2(s string) (*hash, error) {
	f := strings.Split(s, "$")
	if len(f) != 3 {
		return nil, errors.New("$7$ hash: want $7$iterations$salt$hash")
	}
	n, err := parseDecimal(f[0], MaxPBKDF2Iterations)
	if err != nil {
		return nil, fmt.Errorf("$7$ hash: iterations: %w", err)
	}
	h := &hash{scheme: PBKDF2, iter: n}
	if h.salt, err = decodeSalt(b64, f[1]); err != nil {
		return nil, fmt.Errorf("$7$ hash: %w", err)
	}
	if h.sum, err = decodeSum(b64, f[2], sha512Size); err != nil {
		return nil, fmt.Errorf("$7$ hash: %w", err)
	}
	return h, nil
}

func parseArgon2id(s string) (*hash, error) {
	f := strings.Split(s, "$")
	if len(f) != 4 {
		return nil, errors.New("argon2id hash: want $argon2id$v=19$m=M,t=T,p=P$salt$hash")
	}
	if f[0] != "v=19" {
		return nil, errors.New("argon2id hash: only version v=19 is supported")
	}
	ps := strings.Split(f[1], ",")
	if len(ps) != 3 || !strings.HasPrefix(ps[0], "m=") || !strings.HasPrefix(ps[1], "t=") || !strings.HasPrefix(ps[2], "p=") {
		return nil, errors.New("argon2id hash: want parameters m=M,t=T,p=P in that order")
	}
	h := &hash{scheme: Argon2id}
	m, err := parseDecimal(ps[0][2:], MaxArgon2Memory)
	if err != nil {
		return nil, fmt.Errorf("argon2id hash: memory m (KiB, at most %d = 256 MiB): %w", MaxArgon2Memory, err)
	}
	t, err := parseDecimal(ps[1][2:], MaxArgon2Time)
	if err != nil {
		return nil, fmt.Errorf("argon2id hash: time t: %w", err)
	}
	p, err := parseDecimal(ps[2][2:], MaxArgon2Threads)
	if err != nil {
		return nil, fmt.Errorf("argon2id hash: parallelism p: %w", err)
	}
	if m < 8*p {
		return nil, fmt.Errorf("argon2id hash: memory m=%d is below 8 KiB per lane (p=%d)", m, p)
	}
	h.mem, h.iter, h.par = m, t, uint8(p)
	if h.salt, err = decodeSalt(b64Raw, f[2]); err != nil {
		return nil, fmt.Errorf("argon2id hash: %w", err)
	}
	if h.sum, err = decodeSum(b64Raw, f[3], 0); err != nil {
		return nil, fmt.Errorf("argon2id hash: %w", err)
	}
	return h, nil
}

// parseDecimal parses a positive decimal number without sign or leading
// zeros, at most max.
func parseDecimal(s string, max uint32) (uint32, error) {
	if s == "" || s[0] == '0' || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a positive decimal number", clip(s))
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > uint64(max) {
		return 0, fmt.Errorf("%s exceeds the limit of %d", clip(s), max)
	}
	return uint32(n), nil
}

// decodeB64 decodes s strictly: the decoder skips carriage returns and
// line feeds, so without this check one hash would have many spellings
// (hashes are compared as text when a file is edited and written back).
func decodeB64(enc *base64.Encoding, s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line break inside base64")
	}
	return enc.DecodeString(s)
}

func decodeSalt(enc *base64.Encoding, s string) ([]byte, error) {
	b, err := decodeB64(enc, s)
	if err != nil {
		return nil, errors.New("salt is not valid base64")
	}
	if len(b) < minSalt || len(b) > maxSalt {
		return nil, fmt.Errorf("salt is %d bytes; want %d to %d", len(b), minSalt, maxSalt)
	}
	return b, nil
}

// decodeSum decodes the hash value; want > 0 requires that exact length.
func decodeSum(enc *base64.Encoding, s string, want int) ([]byte, error) {
	b, err := decodeB64(enc, s)
	if err != nil {
		return nil, errors.New("hash value is not valid base64")
	}
	if want > 0 && len(b) != want {
		return nil, fmt.Errorf("hash value is %d bytes; want %d", len(b), want)
	}
	if len(b) < minSum || len(b) > maxSum {
		return nil, fmt.Errorf("hash value is %d bytes; want %d to %d", len(b), minSum, maxSum)
	}
	return b, nil
}

// clip shortens text from a file before it goes into an error message.
func clip(s string) string {
	if len(s) > 24 {
		return s[:24] + "..."
	}
	return s
}

// String encodes h in the form parseHash reads.
func (h *hash) String() string {
	switch h.scheme {
	case SHA512:
		return "$6$" + b64.EncodeToString(h.salt) + "$" + b64.EncodeToString(h.sum)
	case PBKDF2:
		return fmt.Sprintf("$7$%d$%s$%s", h.iter, b64.EncodeToString(h.salt), b64.EncodeToString(h.sum))
	case Argon2id:
		return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", h.mem, h.iter, h.par,
			b64Raw.EncodeToString(h.salt), b64Raw.EncodeToString(h.sum))
	}
	return ""
}

// derive computes the hash value of password under h's scheme, parameters
// and salt.
func (h *hash) derive(password []byte) []byte {
	switch h.scheme {
	case SHA512:
		d := sha512.New()
		d.Write(password)
		d.Write(h.salt)
		return d.Sum(nil)
	case PBKDF2:
		k, err := pbkdf2.Key(sha512.New, string(password), h.salt, int(h.iter), len(h.sum))
		if err != nil {
			// Only FIPS 140-only mode refuses parameters; treat it as
			// a mismatch rather than admit anyone.
			return nil
		}
		return k
	case Argon2id:
		return argon2.IDKey(password, h.salt, h.iter, h.mem, h.par, uint32(len(h.sum)))
	}
	return nil
}

// verify reports in constant time (for a given h) whether password matches.
func (h *hash) verify(password []byte) bool {
	got := h.derive(password)
	return len(got) == len(h.sum) && subtle.ConstantTimeCompare(got, h.sum) == 1
}

// newHash hashes password for writing: argon2id, or PBKDF2-SHA512 when the
// process runs in FIPS 140 mode (argon2 is not an approved algorithm).
func newHash(password []byte) (*hash, error) {
	p := params{scheme: Argon2id, iter: writeArgon2Time, mem: writeArgon2Memory, par: writeArgon2Par, saltLen: writeArgon2Salt, sumLen: writeArgon2Sum}
	if fips140.Enabled() {
		p = params{scheme: PBKDF2, iter: writePBKDF2Iter, saltLen: writePBKDF2Salt, sumLen: sha512Size}
	}
	return hashWith(p, password)
}

// hashWith hashes password under p with a fresh random salt.
func hashWith(p params, password []byte) (*hash, error) {
	h := &hash{scheme: p.scheme, iter: p.iter, mem: p.mem, par: p.par, salt: make([]byte, p.saltLen), sum: make([]byte, p.sumLen)}
	rand.Read(h.salt) // never fails (crypto/rand)
	h.sum = h.derive(password)
	if len(h.sum) != p.sumLen {
		return nil, fmt.Errorf("passwd: %s hashing failed", p.scheme)
	}
	return h, nil
}
