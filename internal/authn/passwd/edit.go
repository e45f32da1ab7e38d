package passwd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MaxPassword is the longest password, as in MQTT (65,535 bytes).
const MaxPassword = 65535

// Editor changes a password file for moat passwd. Lines it does not touch
// (comments, other users) are written back as they were. It is not safe
// for concurrent use, and two processes editing the same file at once may
// lose one of the changes.
type Editor struct {
	path  string
	mode  fs.FileMode
	orig  fs.FileInfo // the file replaced, nil when new
	lines []line
}

// Edit opens the password file at path for changes. With create, the
// current content is discarded (mosquitto_passwd -c) and a missing file is
// no error; otherwise the file must exist and be valid, except that
// plain-text passwords are accepted (they are what Upgrade hashes).
func Edit(path string, create bool) (*Editor, error) {
	e := &Editor{path: path, mode: 0o600}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		e.path = real // write through a symlink, not over it
	}
	data, mode, err := readFile(e.path)
	switch {
	case err == nil:
		e.mode = mode
		if e.orig, err = os.Stat(e.path); err != nil {
			return nil, fmt.Errorf("passwd: %w", err)
		}
	case errors.Is(err, fs.ErrNotExist) && create:
		return e, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("passwd: %s does not exist; create it with -c", path)
	default:
		return nil, err
	}
	if create {
		return e, nil
	}
	if e.lines, err = parseLines(path, data, true); err != nil {
		return nil, err
	}
	return e, nil
}

// Set gives user the password, hashed with argon2id (PBKDF2-SHA512 in
// FIPS 140 mode), replacing the user's line or appending one.
func (e *Editor) Set(user string, password []byte) error {
	if err := checkUsername(user); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := CheckPassword(password); err != nil {
		return err
	}
	h, err := newHash(password)
	if err != nil {
		return err
	}
	for i := range e.lines {
		if e.lines[i].user == user {
			e.lines[i].setHash(h)
			return nil
		}
	}
	l := line{user: user}
	l.setHash(h)
	e.lines = append(e.lines, l)
	return nil
}

// CheckPassword reports whether password can be stored: not empty, at most
// MaxPassword bytes, on one line.
func CheckPassword(password []byte) error {
	switch {
	case len(password) == 0:
		return errors.New("passwd: empty password")
	case len(password) > MaxPassword:
		return fmt.Errorf("passwd: the password is %d bytes long; MQTT allows %d", len(password), MaxPassword)
	case strings.ContainsAny(string(password), "\r\n"):
		return errors.New("passwd: the password contains a line break")
	}
	return nil
}

func (l *line) setHash(h *hash) {
	l.h, l.raw = h, h.String()
	l.text = l.user + ":" + l.raw
}

// Delete removes user's line.
func (e *Editor) Delete(user string) error {
	for i := range e.lines {
		if e.lines[i].user == user {
			e.lines = append(e.lines[:i], e.lines[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("passwd: user %q is not in %s", clip(user), e.path)
}

// Upgrade hashes every plain-text password in the file, as
// mosquitto_passwd -U does, and returns the users it hashed. Lines that
// are already hashed are left alone (hashing a hash would lock the user
// out). Weak lists the users whose hashes are of an older, cheaper kind
// ($6$, or $7$ with fewer iterations than moat passwd writes); only a new
// password can upgrade those.
func (e *Editor) Upgrade() (hashed, weak []string, err error) {
	for i := range e.lines {
		l := &e.lines[i]
		switch {
		case l.user == "":
		case l.h == nil:
			h, err := newHash([]byte(l.raw))
			if err != nil {
				return nil, nil, err
			}
			l.setHash(h)
			hashed = append(hashed, l.user)
		case l.h.scheme == SHA512, l.h.scheme == PBKDF2 && l.h.iter < writePBKDF2Iter:
			weak = append(weak, l.user)
		}
	}
	return hashed, weak, nil
}

// Plain returns the users whose passwords are in plain text.
func (e *Editor) Plain() []string {
	var users []string
	for _, l := range e.lines {
		if l.user != "" && l.h == nil {
			users = append(users, l.user)
		}
	}
	return users
}

// Write replaces the file atomically (a temporary file in the same
// directory, synced and renamed over it). A new file gets mode 0600; an
// existing file keeps its mode.
func (e *Editor) Write() error {
	var b strings.Builder
	for _, l := range e.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	if b.Len() > MaxFileSize {
		return fmt.Errorf("passwd: %s would grow beyond %d bytes", e.path, MaxFileSize)
	}
	dir := filepath.Dir(e.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(e.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(e.mode); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: %w", err)
	}
	if e.orig != nil {
		if err := keepOwner(tmp, e.orig); err != nil {
			tmp.Close()
			return fmt.Errorf("passwd: %s could not keep its owner (%w); run as its owner or as root", e.path, err)
		}
	}
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("passwd: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := os.Rename(tmp.Name(), e.path); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable where the system allows
		d.Close()
	}
	return nil
}
