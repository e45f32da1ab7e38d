package passwd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// Limits on the file itself.
const (
	// MaxFileSize is the largest password file read (64 MiB).
	MaxFileSize = 64 << 20
	// MaxUsername is the longest username, as in MQTT (a UTF-8 string of
	// at most 65,535 bytes).
	MaxUsername = 65535
	// MaxLine is the longest line: a username, a colon and a hash.
	MaxLine = MaxUsername + 1 + maxHashText
	// maxErrors is how many problems one error reports.
	maxErrors = 10
)

// line is one line of a password file.
type line struct {
	num  int
	text string // the line as read, without the newline (comments, blanks)
	user string // "" for comments and blank lines
	raw  string // the hash field as written (or the plain-text password)
	h    *hash  // nil for comments, blanks and plain-text passwords
}

// parseLines parses a password file. Lines are "user:hash"; blank lines
// and lines starting with '#' are kept as they are. Blanks around the
// username and the hash are ignored, as Mosquitto does. A line that is not
// a valid entry, or a username given twice, makes the whole file an error
// (up to maxErrors problems are reported, each with name:line). With
// allowPlain, "user:password" lines (a plain-text password, for -U) are
// accepted; otherwise they are errors.
func parseLines(name string, data []byte, allowPlain bool) ([]line, error) {
	var (
		lines []line
		errs  []error
		seen  = make(map[string]int)
	)
	fail := func(n int, format string, a ...any) {
		if len(errs) < maxErrors {
			errs = append(errs, fmt.Errorf("passwd: %s:%d: "+format, append([]any{name, n}, a...)...))
		} else if len(errs) == maxErrors {
			errs = append(errs, fmt.Errorf("passwd: %s: more problems not shown", name))
		}
	}
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		// Otherwise the first username would silently begin with U+FEFF.
		return nil, fmt.Errorf("passwd: %s:1: the file starts with a byte order mark; save it as UTF-8 without one", name)
	}
	for n := 1; len(data) > 0; n++ {
		var text []byte
		text, data, _ = bytes.Cut(data, []byte{'\n'})
		text = bytes.TrimSuffix(text, []byte{'\r'})
		if len(text) > MaxLine {
			fail(n, "line is %d bytes long; at most %d", len(text), MaxLine)
			continue
		}
		l := line{num: n, text: string(text)}
		t := strings.Trim(l.text, " \t")
		if t == "" || t[0] == '#' {
			lines = append(lines, l)
			continue
		}
		user, raw, ok := strings.Cut(t, ":")
		if !ok {
			fail(n, "no ':' between username and password hash (want user:hash; comments start with '#')")
			continue
		}
		user, raw = strings.Trim(user, " \t"), strings.Trim(raw, " \t")
		if err := checkUsername(user); err != nil {
			fail(n, "%v", err)
			continue
		}
		if prev, dup := seen[user]; dup {
			fail(n, "user %q is already defined on line %d; each user may appear once", clip(user), prev)
			continue
		}
		seen[user] = n
		l.user, l.raw = user, raw
		if raw == "" {
			fail(n, "user %q has no password hash", clip(user))
			continue
		}
		if strings.ContainsFunc(raw, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			// No hash holds one, and a plain-text password ending in a
			// carriage return would lose it when the file is written
			// back with CRLF line ends: refused rather than read two
			// ways. The value is not echoed: it may be a password.
			fail(n, "user %q: the password field holds a control character (a stray carriage return or tab?)", clip(user))
			continue
		}
		h, err := parseHash(raw)
		switch {
		case errors.Is(err, errPlain) && !allowPlain:
			// Never echo the value: it is a password.
			fail(n, "user %q has a plain-text password; hash the file with \"moat passwd -U %s\"", clip(user), name)
			continue
		case errors.Is(err, errPlain) && strings.Contains(raw, ":"):
			fail(n, "user %q: a plain-text password containing ':' is ambiguous (mosquitto_passwd -U would cut it at the ':'); set it with \"moat passwd\" instead", clip(user))
			continue
		case errors.Is(err, errPlain):
		case strings.Contains(raw, ":"):
			fail(n, "user %q: unexpected ':' in the hash", clip(user))
			continue
		case err != nil:
			fail(n, "user %q: %v", clip(user), err)
			continue
		default:
			l.h = h
		}
		lines = append(lines, l)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return lines, nil
}

// checkUsername reports whether user can be stored in a password file and
// sent by an MQTT client.
func checkUsername(user string) error {
	switch {
	case user == "":
		return errors.New("empty username")
	case len(user) > MaxUsername:
		return fmt.Errorf("username is %d bytes long; MQTT allows %d", len(user), MaxUsername)
	case !utf8.ValidString(user):
		return errors.New("username is not valid UTF-8, so no MQTT client can send it")
	case strings.ContainsRune(user, ':'):
		return errors.New("username contains ':', which separates the username from the hash")
	case user[0] == '#':
		return errors.New("username starts with '#', which marks a comment")
	case strings.Trim(user, " \t") != user:
		return errors.New("username starts or ends with a blank, which the file format drops")
	}
	for _, r := range user {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("username contains the control character %U", r)
		}
	}
	return nil
}

// readFile reads a password file, refusing anything but a regular file of
// at most MaxFileSize bytes.
func readFile(path string) ([]byte, os.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("passwd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("passwd: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("passwd: %s is not a regular file", path)
	}
	if fi.Size() > MaxFileSize {
		return nil, 0, fmt.Errorf("passwd: %s is %d bytes; a password file may have at most %d", path, fi.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("passwd: reading %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, 0, fmt.Errorf("passwd: %s grew beyond %d bytes while being read", path, MaxFileSize)
	}
	return data, fi.Mode().Perm(), nil
}
