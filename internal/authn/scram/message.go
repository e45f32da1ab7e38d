package scram

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The wire format of RFC 5802 §7. Parsers are strict: attributes in the
// order of the grammar, canonical base64, bounded lengths. Optional
// extensions (a lower-case attribute the grammar does not name) are
// skipped, as RFC 5802 allows; "m=" (mandatory extension) is refused.

var b64 = base64.StdEncoding.Strict()

// gs2 headers Moat accepts; "p=…" asks for channel binding, which Moat
// does not support.
const (
	gs2None    = "n,,"
	gs2NoCBind = "y,,"
)

func malformed(what, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, what, fmt.Sprintf(format, a...))
}

// attrs splits a message into its attributes, each "x=value" with x a
// letter. what names the message for errors.
func attrs(what, msg string) ([]string, error) {
	if len(msg) > MaxMessage {
		return nil, malformed(what, "%d bytes; at most %d", len(msg), MaxMessage)
	}
	if !utf8.ValidString(msg) {
		return nil, malformed(what, "not valid UTF-8")
	}
	parts := strings.Split(msg, ",")
	for _, p := range parts {
		if len(p) < 2 || p[1] != '=' || !isLetter(p[0]) {
			return nil, malformed(what, "attribute %s is not of the form x=value", clip(p))
		}
	}
	return parts, nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// expect checks that attribute a is named name and returns its value.
func expect(what, a string, name byte) (string, error) {
	if a[0] != name {
		return "", malformed(what, "want attribute %c=, got %s", name, clip(a))
	}
	return a[2:], nil
}

// extensions checks the attributes after the ones the grammar requires:
// they are skipped, but must not be mandatory ("m=") or repeat a known
// attribute.
func extensions(what string, rest []string) error {
	for _, a := range rest {
		if strings.IndexByte("mnrcpsiev", a[0]) >= 0 {
			return malformed(what, "unexpected attribute %c= (mandatory extensions and repeated attributes are refused)", a[0])
		}
	}
	return nil
}

// escapeUsername encodes a username as RFC 5802's saslname.
func escapeUsername(u string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(u)
}

// unescapeUsername decodes a saslname; any '=' not starting "=2C" or
// "=3D" is an error, so each username has one encoding.
func unescapeUsername(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "=2C"):
			b.WriteByte(',')
		case strings.HasPrefix(s[i:], "=3D"):
			b.WriteByte('=')
		default:
			return "", fmt.Errorf("'=' must be escaped as =3D (and ',' as =2C)")
		}
		i += 2
	}
	return b.String(), nil
}

// CheckUsername reports whether user can be carried by SCRAM and stored
// in a credentials file: not empty, at most MaxUsername bytes of UTF-8,
// without control characters or ':'.
func CheckUsername(user string) error {
	switch {
	case user == "":
		return fmt.Errorf("scram: empty username")
	case len(user) > MaxUsername:
		return fmt.Errorf("scram: the username is %d bytes long; at most %d", len(user), MaxUsername)
	case !utf8.ValidString(user):
		return fmt.Errorf("scram: the username is not valid UTF-8")
	case strings.ContainsRune(user, ':'):
		return fmt.Errorf("scram: the username contains ':', which separates the fields of the credentials file")
	}
	for _, r := range user {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("scram: the username contains the control character %U", r)
		}
	}
	return nil
}

func checkNonce(what, n string) error {
	if n == "" || len(n) > maxNonce {
		return malformed(what, "nonce of %d characters; want 1 to %d", len(n), maxNonce)
	}
	for i := 0; i < len(n); i++ {
		if !isNonceChar(n[i]) {
			return malformed(what, "nonce contains the byte %#02x; only printable ASCII is allowed", n[i])
		}
	}
	return nil
}

// clientFirst is a parsed client-first-message.
type clientFirst struct {
	gs2   string // the GS2 header, "n,," or "y,,"
	user  string // unescaped
	nonce string
	bare  string // client-first-message-bare, for the AuthMessage
}

func parseClientFirst(msg []byte) (clientFirst, error) {
	const what = "client-first-message"
	s := string(msg)
	if len(s) > MaxMessage {
		return clientFirst{}, malformed(what, "%d bytes; at most %d", len(s), MaxMessage)
	}
	flag, rest, ok := strings.Cut(s, ",")
	if !ok {
		return clientFirst{}, malformed(what, "no GS2 header (want \"n,,n=USER,r=NONCE\")")
	}
	switch {
	case flag == "n", flag == "y":
	case strings.HasPrefix(flag, "p="):
		return clientFirst{}, malformed(what, "the client asks for channel binding (%s), which Moat does not support; use the mechanism without -PLUS and the GS2 header \"n,,\"", clip(flag))
	default:
		return clientFirst{}, malformed(what, "GS2 channel-binding flag %s; want \"n\"", clip(flag))
	}
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok {
		return clientFirst{}, malformed(what, "GS2 header not terminated")
	}
	if authzid != "" {
		return clientFirst{}, malformed(what, "an authorization identity (a=) is not supported; send the GS2 header %q", flag+",,")
	}
	as, err := attrs(what, bare)
	if err != nil {
		return clientFirst{}, err
	}
	if as[0][0] == 'm' {
		return clientFirst{}, malformed(what, "mandatory extension (m=) not supported")
	}
	if len(as) < 2 {
		return clientFirst{}, malformed(what, "want n=USER,r=NONCE")
	}
	en, err := expect(what, as[0], 'n')
	if err != nil {
		return clientFirst{}, err
	}
	user, err := unescapeUsername(en)
	if err != nil {
		return clientFirst{}, malformed(what, "username: %v", err)
	}
	if err := CheckUsername(user); err != nil {
		return clientFirst{}, malformed(what, "%v", strings.TrimPrefix(err.Error(), "scram: "))
	}
	nonce, err := expect(what, as[1], 'r')
	if err != nil {
		return clientFirst{}, err
	}
	if err := checkNonce(what, nonce); err != nil {
		return clientFirst{}, err
	}
	if err := extensions(what, as[2:]); err != nil {
		return clientFirst{}, err
	}
	return clientFirst{gs2: flag + ",,", user: user, nonce: nonce, bare: bare}, nil
}

func (c clientFirst) String() string {
	return c.gs2 + c.bare
}

// serverFirst is a parsed server-first-message.
type serverFirst struct {
	nonce string
	salt  []byte
	iter  int
	raw   string
}

func formatServerFirst(nonce string, salt []byte, iter int) string {
	return "r=" + nonce + ",s=" + b64.EncodeToString(salt) + ",i=" + strconv.Itoa(iter)
}

func parseServerFirst(msg []byte) (serverFirst, error) {
	const what = "server-first-message"
	s := string(msg)
	as, err := attrs(what, s)
	if err != nil {
		return serverFirst{}, err
	}
	if as[0][0] == 'm' {
		return serverFirst{}, malformed(what, "mandatory extension (m=) not supported")
	}
	if len(as) < 3 {
		return serverFirst{}, malformed(what, "want r=NONCE,s=SALT,i=ITERATIONS")
	}
	nonce, err := expect(what, as[0], 'r')
	if err != nil {
		return serverFirst{}, err
	}
	if err := checkNonce(what, nonce); err != nil {
		return serverFirst{}, err
	}
	es, err := expect(what, as[1], 's')
	if err != nil {
		return serverFirst{}, err
	}
	salt, err := b64.DecodeString(es)
	if err != nil || len(salt) < minSalt || len(salt) > maxSalt {
		return serverFirst{}, malformed(what, "salt must be canonical base64 of %d to %d bytes", minSalt, maxSalt)
	}
	ei, err := expect(what, as[2], 'i')
	if err != nil {
		return serverFirst{}, err
	}
	iter, err := parseIterations(ei)
	if err != nil {
		return serverFirst{}, malformed(what, "%v", err)
	}
	if err := extensions(what, as[3:]); err != nil {
		return serverFirst{}, err
	}
	return serverFirst{nonce: nonce, salt: salt, iter: iter, raw: s}, nil
}

// parseIterations parses a positive decimal without leading zeros, at
// most MaxIterations.
func parseIterations(s string) (int, error) {
	if s == "" || len(s) > 9 || s[0] == '0' {
		return 0, fmt.Errorf("iteration count %s: want a positive number up to %d without leading zeros", clip(s), MaxIterations)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxIterations {
		return 0, fmt.Errorf("iteration count %s: want a positive number up to %d", clip(s), MaxIterations)
	}
	return n, nil
}

// clientFinal is a parsed client-final-message.
type clientFinal struct {
	cbind        string // the decoded channel binding data (the GS2 header)
	nonce        string
	proof        []byte
	withoutProof string
}

func parseClientFinal(msg []byte, m Mechanism) (clientFinal, error) {
	const what = "client-final-message"
	as, err := attrs(what, string(msg))
	if err != nil {
		return clientFinal{}, err
	}
	if len(as) < 3 {
		return clientFinal{}, malformed(what, "want c=BINDING,r=NONCE,p=PROOF")
	}
	ec, err := expect(what, as[0], 'c')
	if err != nil {
		return clientFinal{}, err
	}
	cb, err := b64.DecodeString(ec)
	if err != nil {
		return clientFinal{}, malformed(what, "channel binding is not canonical base64")
	}
	nonce, err := expect(what, as[1], 'r')
	if err != nil {
		return clientFinal{}, err
	}
	if err := checkNonce(what, nonce); err != nil {
		return clientFinal{}, err
	}
	last := as[len(as)-1]
	ep, err := expect(what, last, 'p')
	if err != nil {
		return clientFinal{}, err
	}
	proof, err := b64.DecodeString(ep)
	if err != nil || len(proof) != m.size() {
		return clientFinal{}, malformed(what, "proof must be canonical base64 of %d bytes for %s", m.size(), m)
	}
	if err := extensions(what, as[2:len(as)-1]); err != nil {
		return clientFinal{}, err
	}
	return clientFinal{cbind: string(cb), nonce: nonce, proof: proof,
		withoutProof: strings.Join(as[:len(as)-1], ",")}, nil
}

// parseServerFinal returns the server signature of a server-final-message,
// or the server's error ("e=…") as an error.
func parseServerFinal(msg []byte, m Mechanism) ([]byte, error) {
	const what = "server-final-message"
	as, err := attrs(what, string(msg))
	if err != nil {
		return nil, err
	}
	if as[0][0] == 'e' {
		return nil, fmt.Errorf("%w: the server reports %s", ErrAuthFailed, clip(as[0][2:]))
	}
	ev, err := expect(what, as[0], 'v')
	if err != nil {
		return nil, err
	}
	v, err := b64.DecodeString(ev)
	if err != nil || len(v) != m.size() {
		return nil, malformed(what, "server signature must be canonical base64 of %d bytes for %s", m.size(), m)
	}
	if err := extensions(what, as[1:]); err != nil {
		return nil, err
	}
	return v, nil
}
