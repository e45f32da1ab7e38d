package scram

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Limits on the credentials file.
const (
	// MaxFileSize is the largest credentials file read (16 MiB).
	MaxFileSize = 16 << 20
	// maxLine is the longest line: a username and five short fields.
	maxLine = MaxUsername + 512
	// maxErrors is how many problems one error reports.
	maxErrors = 10
)

type key struct {
	user string
	mech Mechanism
}

// FileConfig configures a File. The zero value is ready to use.
type FileConfig struct {
	// MinIterations is the smallest iteration count a line may have.
	// Default MinIterations (4096); it cannot be set lower.
	MinIterations int
}

// File is a loaded credentials file and a CredentialLookup. It is safe for
// concurrent use; Reload swaps its contents atomically.
//
// Each line is
//
//	user:MECHANISM:iterations:salt:storedkey:serverkey
//
// with MECHANISM SCRAM-SHA-256 or SCRAM-SHA-512 and the last three fields
// in standard base64 with padding. A user may have one line per
// mechanism. Blank lines and lines starting with '#' are ignored.
type File struct {
	path    string
	minIter int

	reloadMu sync.Mutex
	tab      atomic.Pointer[map[key]Credential]
}

var _ CredentialLookup = (*File)(nil)

// LoadFile reads the credentials file at path. Any invalid line makes the
// whole file an error (up to 10 problems, each as path:line).
func LoadFile(path string, cfg FileConfig) (*File, error) {
	minIter := cfg.MinIterations
	if minIter == 0 {
		minIter = MinIterations
	}
	if minIter < MinIterations || minIter > MaxIterations {
		return nil, fmt.Errorf("scram: FileConfig.MinIterations %d: want %d to %d", cfg.MinIterations, MinIterations, MaxIterations)
	}
	f := &File{path: path, minIter: minIter}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the file again and swaps it in; on error the previous
// contents stay in use.
func (f *File) Reload() error {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	data, _, err := readFile(f.path)
	if err != nil {
		return err
	}
	tab, _, err := parseFile(f.path, data, f.minIter)
	if err != nil {
		return err
	}
	f.tab.Store(&tab)
	return nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Len returns the number of credentials (user and mechanism pairs).
func (f *File) Len() int { return len(*f.tab.Load()) }

// LookupCredential implements CredentialLookup.
func (f *File) LookupCredential(_ context.Context, user string, mech Mechanism) (Credential, error) {
	c, ok := (*f.tab.Load())[key{user, mech}]
	if !ok {
		return Credential{}, ErrUnknownUser
	}
	return c, nil
}

// parseFile parses a credentials file; lines keeps the text of each line
// in order, for AddToFile.
func parseFile(name string, data []byte, minIter int) (map[key]Credential, []fileLine, error) {
	tab := make(map[key]Credential)
	seen := make(map[key]int)
	var lines []fileLine
	var errs []error
	fail := func(n int, format string, a ...any) {
		if len(errs) < maxErrors {
			errs = append(errs, fmt.Errorf("scram: %s:%d: "+format, append([]any{name, n}, a...)...))
		} else if len(errs) == maxErrors {
			errs = append(errs, fmt.Errorf("scram: %s: more problems not shown", name))
		}
	}
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		return nil, nil, fmt.Errorf("scram: %s:1: the file starts with a byte order mark; save it as UTF-8 without one", name)
	}
	for n := 1; len(data) > 0; n++ {
		var text []byte
		text, data, _ = bytes.Cut(data, []byte{'\n'})
		text = bytes.TrimSuffix(text, []byte{'\r'})
		if len(text) > maxLine {
			fail(n, "line is %d bytes long; at most %d", len(text), maxLine)
			continue
		}
		t := string(text)
		if strings.TrimSpace(t) == "" || t[0] == '#' {
			lines = append(lines, fileLine{text: t})
			continue
		}
		f := strings.Split(t, ":")
		if len(f) != 6 {
			fail(n, "%d fields; want user:MECHANISM:iterations:salt:storedkey:serverkey", len(f))
			continue
		}
		if err := CheckUsername(f[0]); err != nil {
			fail(n, "%s", strings.TrimPrefix(err.Error(), "scram: "))
			continue
		}
		user := f[0]
		m, err := ParseMechanism(f[1])
		if err != nil {
			fail(n, "user %s: mechanism %s: want SCRAM-SHA-256 or SCRAM-SHA-512", clip(user), clip(f[1]))
			continue
		}
		iter, err := parseIterations(f[2])
		if err != nil {
			fail(n, "user %s: %v", clip(user), err)
			continue
		}
		var c = Credential{Mechanism: m, Iterations: iter}
		var bad string
		for i, dst := range []*[]byte{&c.Salt, &c.StoredKey, &c.ServerKey} {
			if *dst, err = b64.DecodeString(f[3+i]); err != nil {
				bad = []string{"salt", "stored key", "server key"}[i]
				break
			}
		}
		if bad != "" {
			fail(n, "user %s: the %s is not canonical base64", clip(user), bad)
			continue
		}
		if err := c.validate(minIter); err != nil {
			fail(n, "user %s: %v", clip(user), err)
			continue
		}
		k := key{user, m}
		if prev, dup := seen[k]; dup {
			fail(n, "user %s already has a %s credential on line %d", clip(user), m, prev)
			continue
		}
		seen[k] = n
		tab[k] = c
		lines = append(lines, fileLine{text: t, key: k})
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return tab, lines, nil
}

type fileLine struct {
	text string
	key  key // zero for comments and blanks
}

// readFile reads a credentials file: a regular file of at most
// MaxFileSize bytes.
func readFile(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("scram: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("scram: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("scram: %s is not a regular file", path)
	}
	if fi.Size() > MaxFileSize {
		return nil, 0, fmt.Errorf("scram: %s is %d bytes; a credentials file may have at most %d", path, fi.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("scram: reading %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, 0, fmt.Errorf("scram: %s grew beyond %d bytes while being read", path, MaxFileSize)
	}
	return data, fi.Mode().Perm(), nil
}

// AddToFile sets user's credentials in the file at path, replacing the
// user's lines for the same mechanisms and keeping every other line. A
// missing file is created with mode 0600 when create is true. The file is
// replaced atomically (a temporary file in the same directory, then
// rename); a symlink is written through, not replaced. Two processes
// editing the file at once may lose one change.
func AddToFile(path, user string, create bool, creds ...Credential) error {
	if err := CheckUsername(user); err != nil {
		return err
	}
	if user[0] == '#' {
		return errors.New("scram: the username starts with '#', which marks a comment in the credentials file")
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	mode := fs.FileMode(0o600)
	var lines []fileLine
	data, m, err := readFile(path)
	switch {
	case err == nil:
		mode = m
		if _, lines, err = parseFile(path, data, MinIterations); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist) && create:
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("scram: %s does not exist; create it with -c", path)
	default:
		return err
	}
	for _, c := range creds {
		if err := c.validate(MinIterations); err != nil {
			return fmt.Errorf("scram: credential for %s: %w", clip(user), err)
		}
		k, replaced := key{user, c.Mechanism}, false
		for i := range lines {
			if lines[i].key == k {
				lines[i].text, replaced = c.line(user), true
			}
		}
		if !replaced {
			lines = append(lines, fileLine{text: c.line(user), key: k})
		}
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return writeAtomic(path, b.Bytes(), mode)
}

func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("scram: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("scram: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("scram: writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("scram: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("scram: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("scram: %w", err)
	}
	return nil
}
