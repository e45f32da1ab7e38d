// Package passwd is the password file backend: it reads files written by
// mosquitto_passwd ($6$ SHA-512, $7$ PBKDF2-SHA512, and Mosquitto 2.1's
// argon2id PHC strings) and by moat passwd, verifies CONNECT passwords
// against them in constant time under a concurrency limit, and reloads
// them atomically.
//
// A File answers NotMine for clients that send no username (the listener's
// anonymous policy decides), Allow for a matching password and Deny
// otherwise. A username that is not in the file is refused after the same
// hash work as a wrong password, so timing does not tell which users exist.
package passwd

import (
	"context"
	"crypto/fips140"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/authn"
)

// Config configures a File. The zero value is ready to use.
type Config struct {
	// Limiter bounds how many verifications run at once. Share one
	// Limiter between all hashing backends of a process so the bound is
	// global. Default: a Limiter of its own with GOMAXPROCS slots.
	Limiter *Limiter
	// PassUnknown makes a username that is not in the file NotMine instead
	// of Deny, so a later backend of the chain (LDAP) may decide. The hash
	// work is done either way. Default false: as Mosquitto, a password
	// file refuses the usernames it does not list.
	PassUnknown bool
}

// File is a loaded password file and an authn.Backend. It is safe for
// concurrent use; Reload swaps its contents atomically.
type File struct {
	path string
	cfg  Config
	lim  *Limiter

	reloadMu sync.Mutex // serializes Reload and Watch's checks
	tab      atomic.Pointer[table]

	// testHookVerify, when set, runs inside the limiter slot before each
	// verification with the parameters of the hash being checked.
	testHookVerify func(params)
}

var _ authn.Backend = (*File)(nil)

// table is one immutable generation of the file.
type table struct {
	users map[string]*hash
	dummy *hash // checked for unknown users
	sum   [sha256.Size]byte
}

// Load reads and checks the password file at path. A file with any bad
// line is refused as a whole; the error lists the problems with file:line.
func Load(path string, cfg Config) (*File, error) {
	f := &File{path: path, cfg: cfg, lim: cfg.Limiter}
	if f.lim == nil {
		f.lim = NewLimiter(0)
	}
	t, err := loadTable(path)
	if err != nil {
		return nil, err
	}
	f.tab.Store(t)
	return f, nil
}

func loadTable(path string) (*table, error) {
	data, _, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return newTable(path, data)
}

func newTable(name string, data []byte) (*table, error) {
	lines, err := parseLines(name, data, false)
	if err != nil {
		return nil, err
	}
	t := &table{users: make(map[string]*hash), sum: sha256.Sum256(data)}
	count := make(map[params]int)
	var errs []error
	for _, l := range lines {
		if l.h != nil && fips140.Enforced() && l.h.scheme == PBKDF2 && len(l.h.salt) < 16 && len(errs) < maxErrors {
			// Go refuses such a derivation in FIPS 140-only mode: the
			// user could never log in. Say so now rather than answer
			// "wrong password" later.
			errs = append(errs, fmt.Errorf("passwd: %s:%d: user %q: FIPS 140-only mode refuses PBKDF2 salts shorter than 16 bytes (Mosquitto 2.0 writes 12); set a new password with moat passwd", name, l.num, clip(l.user)))
		}
		if l.h != nil {
			t.users[l.user] = l.h
			count[l.h.params()]++
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// The dummy has the parameters most entries have (the costlier on a
	// tie), so an unknown user costs what a typical wrong password costs.
	best, bestN := params{scheme: Argon2id, iter: writeArgon2Time, mem: writeArgon2Memory, par: writeArgon2Par, saltLen: writeArgon2Salt, sumLen: writeArgon2Sum}, 0
	for _, p := range slices.SortedFunc(maps.Keys(count), compareParams) {
		if n := count[p]; n > bestN || (n == bestN && p.cost() > best.cost()) {
			best, bestN = p, n
		}
	}
	// Its salt and value are random: no password matches it, and checking
	// one costs exactly what checking a real entry with these parameters
	// costs.
	t.dummy = &hash{scheme: best.scheme, iter: best.iter, mem: best.mem, par: best.par,
		salt: make([]byte, best.saltLen), sum: make([]byte, best.sumLen)}
	rand.Read(t.dummy.salt) // never fails (crypto/rand)
	rand.Read(t.dummy.sum)
	return t, nil
}

// compareParams orders params deterministically.
func compareParams(a, b params) int {
	for _, d := range []int64{
		int64(a.scheme) - int64(b.scheme), int64(a.iter) - int64(b.iter), int64(a.mem) - int64(b.mem),
		int64(a.par) - int64(b.par), int64(a.saltLen - b.saltLen), int64(a.sumLen - b.sumLen),
	} {
		if d != 0 {
			return int(max(-1, min(1, d)))
		}
	}
	return 0
}

// Name implements authn.Backend.
func (f *File) Name() string { return "passwd" }

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Len returns the number of users in the current generation.
func (f *File) Len() int { return len(f.tab.Load().users) }

// Authenticate implements authn.Backend. It returns an error wrapping
// authn.ErrUnavailable only when no verification slot became free before
// ctx ended (the broker is flooded with logins).
func (f *File) Authenticate(ctx context.Context, req *authn.Request) (authn.Result, error) {
	if req.Username == "" {
		return authn.Result{Verdict: authn.NotMine, Reason: "password file: no username sent"}, nil
	}
	if !req.HasPassword {
		// Refused before any lookup: the same answer, in the same time,
		// for users that exist and users that do not.
		return authn.Result{Verdict: authn.Deny, Reason: "password file: username without a password"}, nil
	}
	t := f.tab.Load()
	h, known := t.users[req.Username]
	if !known {
		h = t.dummy
	}
	var ok bool
	err := f.lim.Do(ctx, func() {
		if f.testHookVerify != nil {
			f.testHookVerify(h.params())
		}
		ok = h.verify(req.Password.Bytes())
	})
	if err != nil {
		return authn.Result{}, fmt.Errorf("%w: password file %s: no free verification slot before the connect deadline: %w", authn.ErrUnavailable, f.path, err)
	}
	switch {
	case !known && f.cfg.PassUnknown:
		return authn.Result{Verdict: authn.NotMine, Reason: "password file: unknown user"}, nil
	case !known:
		return authn.Result{Verdict: authn.Deny, Reason: "password file: unknown user"}, nil
	case !ok:
		return authn.Result{Verdict: authn.Deny, Reason: "password file: wrong password"}, nil
	}
	return authn.Result{Verdict: authn.Allow, Username: req.Username, Reason: "password file: password accepted (" + h.scheme.String() + ")"}, nil
}

// Change lists the users a reload added, removed, or gave a different
// hash. Each list is sorted. Removed and Changed are the identities that
// lost the access they had: their live sessions must be re-evaluated.
type Change struct {
	Added, Removed, Changed []string
}

// Empty reports whether the reload changed nothing.
func (c Change) Empty() bool { return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 }

// Reload re-reads the file and, when it is valid, replaces the users
// atomically: verifications already running finish against the old
// generation. When the new file is bad (or missing) the old users stay in
// force and the error says why; the returned Change is then empty.
func (f *File) Reload() (Change, error) {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	return f.reloadLocked()
}

func (f *File) reloadLocked() (Change, error) {
	data, _, err := readFile(f.path)
	if err != nil {
		return Change{}, err
	}
	return f.applyLocked(data)
}

// applyLocked installs data as the new generation when it differs from the
// current one and is valid.
func (f *File) applyLocked(data []byte) (Change, error) {
	old := f.tab.Load()
	if sha256.Sum256(data) == old.sum {
		return Change{}, nil
	}
	t, err := newTable(f.path, data)
	if err != nil {
		return Change{}, err
	}
	f.tab.Store(t)
	return diff(old, t), nil
}

func diff(old, cur *table) Change {
	var c Change
	for u, h := range old.users {
		nh, ok := cur.users[u]
		switch {
		case !ok:
			c.Removed = append(c.Removed, u)
		case nh.String() != h.String():
			c.Changed = append(c.Changed, u)
		}
	}
	for u := range cur.users {
		if _, ok := old.users[u]; !ok {
			c.Added = append(c.Added, u)
		}
	}
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	slices.Sort(c.Changed)
	return c
}

// Watch reloads the file whenever its content changed, checking at each
// tick, until ctx is done. It runs in the caller's goroutine (the caller
// owns it and waits for it) and calls report after each reload that
// changed something or failed; a bad file is reported once per change, not
// at every tick. report must not block for long.
//
// The wiring passes time.NewTicker(interval).C; tests pass their own
// channel.
func (f *File) Watch(ctx context.Context, tick <-chan time.Time, report func(Change, error)) {
	last := ""           // the failure reported last, so each one is reported once
	var seen fs.FileInfo // the file as last read; unchanged files are not read again
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		if fi, err := os.Stat(f.path); err == nil {
			if seen != nil && os.SameFile(fi, seen) && fi.Size() == seen.Size() && fi.ModTime().Equal(seen.ModTime()) {
				continue
			}
			seen = fi
		}
		c, key, err := f.poll()
		if err != nil {
			seen = nil // read it again next time: a permission fix does not change mtime
		}
		switch {
		case err != nil && key != last:
			last = key
			report(c, err)
		case err == nil:
			last = ""
			if !c.Empty() {
				report(c, nil)
			}
		}
	}
}

// poll reloads the file if its content changed. key identifies a failure
// (the bad content, or the read error).
func (f *File) poll() (Change, string, error) {
	f.reloadMu.Lock()
	defer f.reloadMu.Unlock()
	data, _, err := readFile(f.path)
	if err != nil {
		return Change{}, "read: " + err.Error(), err
	}
	c, err := f.applyLocked(data)
	sum := sha256.Sum256(data)
	return c, fmt.Sprintf("content: %x", sum), err
}
