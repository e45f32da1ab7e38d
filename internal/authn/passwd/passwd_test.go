package passwd

import (
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authn"
)

// cheap are small argon2id parameters that keep tests fast.
var cheap = params{scheme: Argon2id, iter: 1, mem: 64, par: 1, saltLen: 16, sumLen: 32}

func hashLine(t testing.TB, p params, user, password string) string {
	t.Helper()
	h, err := hashWith(p, []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + h.String() + "\n"
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func load(t testing.TB, content string) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, content)
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func auth(t testing.TB, f *File, user, password string) authn.Result {
	t.Helper()
	res, err := f.Authenticate(context.Background(), &authn.Request{
		Username: user, Password: authn.NewPassword([]byte(password)), HasPassword: true,
	})
	if err != nil {
		t.Fatalf("Authenticate(%q): %v", user, err)
	}
	if strings.Contains(res.Reason, password) && password != "" {
		t.Fatalf("reason %q contains the password", res.Reason)
	}
	return res
}

func wantVerdict(t testing.TB, f *File, user, password string, want authn.Verdict) {
	t.Helper()
	if res := auth(t, f, user, password); res.Verdict != want {
		t.Errorf("user %q: got %v (%s), want %v", user, res.Verdict, res.Reason, want)
	}
}

// mosquittoPasswd runs Debian's mosquitto_passwd.
func mosquittoPasswd(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd is not installed (Debian package mosquitto)")
	}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd %v: %v\n%s", args[:len(args)-1], err, out)
	}
}

func TestMosquittoPasswdFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	mosquittoPasswd(t, "-c", "-b", path, "alice", "alice pw")       // $7$ PBKDF2, 101 iterations
	mosquittoPasswd(t, "-b", path, "bob", "söme:pässwörd")          // non-ASCII, a colon
	mosquittoPasswd(t, "-H", "sha512", "-b", path, "carol", "sha1") // $6$
	mosquittoPasswd(t, "-b", path, "alice", "alice new")            // replaced in place
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, pw string
		want     authn.Verdict
	}{
		{"alice", "alice new", authn.Allow},
		{"alice", "alice pw", authn.Deny},
		{"bob", "söme:pässwörd", authn.Allow},
		{"bob", "söme", authn.Deny},
		{"carol", "sha1", authn.Allow},
		{"carol", "sha2", authn.Deny},
		{"dave", "alice new", authn.Deny},
	} {
		wantVerdict(t, f, tc.user, tc.pw, tc.want)
	}
}

// TestMosquittoPasswdUpgrade: a plain-text file hashed by
// mosquitto_passwd -U verifies with the plain-text passwords.
func TestMosquittoPasswdUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, "erin:first one\nfrank:x\n")
	mosquittoPasswd(t, "-U", path)
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, f, "erin", "first one", authn.Allow)
	wantVerdict(t, f, "frank", "x", authn.Allow)
	wantVerdict(t, f, "frank", "y", authn.Deny)
}

// TestGoldenFiles checks files kept in testdata: one written by Debian's
// mosquitto_passwd 2.0.11, one by libargon2 with Mosquitto 2.1's
// parameters (m=47104, t=1, p=1, 64-byte salt and hash), so the formats
// stay covered where those tools are not installed.
func TestGoldenFiles(t *testing.T) {
	for _, tc := range []struct {
		file string
		ok   map[string]string
	}{
		{"mosquitto20.passwd", map[string]string{"alice": "alice pw", "bob": "b0b:colon", "carol": "carol-sha512"}},
		{"mosquitto21-argon2id.passwd", map[string]string{"mosq21": "secret 2.1", "small": "tiny params"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := Load(filepath.Join("testdata", tc.file), Config{})
			if err != nil {
				t.Fatal(err)
			}
			if f.Len() != len(tc.ok) {
				t.Errorf("%d users, want %d", f.Len(), len(tc.ok))
			}
			for u, pw := range tc.ok {
				wantVerdict(t, f, u, pw, authn.Allow)
				wantVerdict(t, f, u, pw+"x", authn.Deny)
			}
		})
	}
}

// TestSHA512Format builds a $6$ line from its definition (SHA-512 over the
// password followed by the raw salt, both base64 with padding) without the
// package's encoder.
func TestSHA512Format(t *testing.T) {
	salt := []byte("twelve bytes")
	sum := sha512.Sum512(append([]byte("pw6"), salt...))
	f := load(t, "u6:$6$"+base64.StdEncoding.EncodeToString(salt)+"$"+base64.StdEncoding.EncodeToString(sum[:])+"\n")
	wantVerdict(t, f, "u6", "pw6", authn.Allow)
	wantVerdict(t, f, "u6", "pw7", authn.Deny)
}

func TestHashRoundTrip(t *testing.T) {
	for _, p := range []params{
		cheap,
		{scheme: PBKDF2, iter: 101, saltLen: 12, sumLen: 64},
		{scheme: SHA512, saltLen: 64, sumLen: 64},
	} {
		h, err := hashWith(p, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		h2, err := parseHash(h.String())
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if h2.String() != h.String() || !h2.verify([]byte("pw")) || h2.verify([]byte("pW")) {
			t.Errorf("%s: round trip failed", p.scheme)
		}
	}
}

func TestAuthenticateVerdicts(t *testing.T) {
	f := load(t, hashLine(t, cheap, "u", "pw"))
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		req  authn.Request
		want authn.Verdict
	}{
		// Mosquitto: a client without a username is anonymous; the
		// listener's allow_anonymous decides, not the password file.
		{"no username", authn.Request{Password: authn.NewPassword([]byte("pw")), HasPassword: true}, authn.NotMine},
		{"username without password", authn.Request{Username: "u"}, authn.Deny},
		{"empty password", authn.Request{Username: "u", HasPassword: true}, authn.Deny},
		{"right", authn.Request{Username: "u", Password: authn.NewPassword([]byte("pw")), HasPassword: true}, authn.Allow},
		{"unknown", authn.Request{Username: "v", Password: authn.NewPassword([]byte("pw")), HasPassword: true}, authn.Deny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := f.Authenticate(ctx, &tc.req)
			if err != nil || res.Verdict != tc.want || res.Reason == "" {
				t.Fatalf("got %v %q err=%v, want %v", res.Verdict, res.Reason, err, tc.want)
			}
			if res.Verdict == authn.Allow && res.Username != "u" {
				t.Errorf("username %q", res.Username)
			}
		})
	}
	pass, err := Load(f.Path(), Config{PassUnknown: true})
	if err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, pass, "v", "pw", authn.NotMine)
	wantVerdict(t, pass, "u", "bad", authn.Deny)
}

// TestSecurityUnknownUserSameWork: an attacker times logins to learn which
// usernames exist. A backend that answers unknown users without hashing
// answers them measurably faster. The test counts the hash work instead of
// measuring time: an unknown user must cost one verification with the
// parameters of the file's entries, like a wrong password.
func TestSecurityUnknownUserSameWork(t *testing.T) {
	pb := params{scheme: PBKDF2, iter: 1000, saltLen: 64, sumLen: 64}
	// Two argon2id users and one PBKDF2 user: the dummy takes the most
	// common parameters.
	f := load(t, hashLine(t, cheap, "a", "pw")+hashLine(t, cheap, "b", "pw")+hashLine(t, pb, "c", "pw"))
	var mu sync.Mutex
	var seen []params
	f.testHookVerify = func(p params) { mu.Lock(); seen = append(seen, p); mu.Unlock() }
	wantVerdict(t, f, "a", "bad guess", authn.Deny)
	wantVerdict(t, f, "nobody", "bad guess", authn.Deny)
	if len(seen) != 2 || seen[0] != seen[1] || seen[0] != cheap {
		t.Fatalf("verifications %+v: an unknown user must do the work of a wrong password", seen)
	}
	// A tie goes to the costlier parameters.
	f = load(t, hashLine(t, cheap, "a", "pw")+hashLine(t, pb, "c", "pw"))
	want := pb
	if cheap.cost() > pb.cost() {
		want = cheap
	}
	if got := f.tab.Load().dummy.params(); got != want {
		t.Errorf("dummy %+v is not the costlier of the tie, %+v", got, want)
	}
}

// TestSecurityLimiter: a flood of logins with wrong passwords must not run
// more verifications at once than the limiter allows, and a login that
// cannot get a slot before its connect deadline fails as unavailable (the
// chain refuses it) without hashing.
func TestSecurityLimiter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, hashLine(t, cheap, "u", "pw"))
	f, err := Load(path, Config{Limiter: NewLimiter(1)})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var calls int
	f.testHookVerify = func(params) {
		calls++
		entered <- struct{}{}
		<-release
	}
	req := &authn.Request{Username: "u", Password: authn.NewPassword([]byte("bad")), HasPassword: true}
	var wg sync.WaitGroup
	wg.Go(func() {
		if res, err := f.Authenticate(context.Background(), req); err != nil || res.Verdict != authn.Deny {
			t.Errorf("first: %v %v", res.Verdict, err)
		}
	})
	<-entered // the only slot is taken
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := f.Authenticate(ctx, req); done <- err }()
	cancel() // the client's connect deadline passes while it waits
	err = <-done
	if !errors.Is(err, authn.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting login: %v, want ErrUnavailable wrapping context.Canceled", err)
	}
	close(release)
	wg.Wait()
	if calls != 1 {
		t.Errorf("%d verifications ran, want 1", calls)
	}
}

func TestLoadRejects(t *testing.T) {
	good := strings.TrimSuffix(hashLine(t, cheap, "ok", "pw"), "\n")
	_, goodHash, _ := strings.Cut(good, ":")
	pb := "$7$101$KXtu3V9NYFSqGJjB$WfyRzmiaaA6jU+3Y+TD+LRGQep0YDUG90trLGqKLbxLrgVZGs3mwR085sa23c9vNqUR7XF5k2oh8JQzyz5MS8w=="
	salt := "ME7wToJFZFsO8rWrqETmlA"
	sum := "Zn4W1+ETGpP5U4KeO4Y7ve4Ug+DUBpbmx6EU8CPtWis"
	for _, tc := range []struct {
		name, line, want string
	}{
		{"no colon", "alice", "no ':'"},
		{"plain text", "alice:hunter2", "plain-text"},
		{"empty hash", "alice:", "no password hash"},
		{"empty user", ":" + goodHash, "empty username"},
		{"duplicate", good + "\n" + good, "already defined on line 1"},
		{"unknown scheme", "alice:$5$abc$def", "unknown hash scheme"},
		{"argon2i", "alice:$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + sum, "only argon2id"},
		{"6 fields", "alice:$6$only", "want $6$salt$hash"},
		{"7 bad base64", "alice:$7$101$!!!!$" + strings.Split(pb, "$")[4], "not valid base64"},
		{"7 short hash", "alice:$7$101$KXtu3V9NYFSqGJjB$AAAA", "want 64"},
		{"7 zero iterations", "alice:" + strings.Replace(pb, "$101$", "$0$", 1), "positive decimal"},
		{"7 leading zero", "alice:" + strings.Replace(pb, "$101$", "$0101$", 1), "positive decimal"},
		{"7 negative", "alice:" + strings.Replace(pb, "$101$", "$-1$", 1), "positive decimal"},
		{"7 absurd iterations", "alice:" + strings.Replace(pb, "$101$", "$4000000000$", 1), "exceeds the limit"},
		{"7 overflow", "alice:" + strings.Replace(pb, "$101$", "$99999999999999999999$", 1), "exceeds the limit"},
		{"argon2 v16", "alice:$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + sum, "v=19"},
		{"argon2 memory bomb", "alice:$argon2id$v=19$m=4194304,t=1,p=1$" + salt + "$" + sum, "256 MiB"},
		{"argon2 t=0", "alice:$argon2id$v=19$m=64,t=0,p=1$" + salt + "$" + sum, "time t"},
		{"argon2 t huge", "alice:$argon2id$v=19$m=64,t=1000,p=1$" + salt + "$" + sum, "time t"},
		{"argon2 p=0", "alice:$argon2id$v=19$m=64,t=1,p=0$" + salt + "$" + sum, "parallelism"},
		{"argon2 m below 8p", "alice:$argon2id$v=19$m=15,t=1,p=2$" + salt + "$" + sum, "below 8 KiB"},
		{"argon2 order", "alice:$argon2id$v=19$t=1,m=64,p=1$" + salt + "$" + sum, "in that order"},
		{"argon2 padded base64", "alice:$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + sum, "not valid base64"},
		{"argon2 short salt", "alice:$argon2id$v=19$m=64,t=1,p=1$AAAA$" + sum, "salt is 3 bytes"},
		{"argon2 extra field", "alice:$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + sum + "$x", "want $argon2id"},
		{"trailing colon", "alice:" + goodHash + ":", "unexpected ':'"},
		{"control char", "al\x01ice:" + goodHash, "control character"},
		{"bad utf8", "al\xffice:" + goodHash, "UTF-8"},
		{"long line", "alice:" + strings.Repeat("A", MaxLine), "line is"},
		{"byte order mark", "\ufeff" + good, ":1: the file starts with a byte order mark"},
		{"long hash", "alice:$7$" + strings.Repeat("1", 2000), "at most 1024"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pw")
			// A good line first: the file is refused as a whole.
			content := "# users\n" + good + "\n" + tc.line + "\n"
			if tc.name == "duplicate" || tc.name == "byte order mark" {
				content = tc.line + "\n"
			}
			writeFile(t, path, content)
			_, err := Load(path, Config{})
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "passwd: "+path+":") {
				t.Errorf("error %q does not say %q with file:line", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestLoadLimits(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	fh, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(MaxFileSize + 1); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	fh.Close()
	if _, err := Load(big, Config{}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("huge file: %v", err)
	}
	if _, err := Load(dir, Config{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing"), Config{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	// Many problems: at most maxErrors are listed.
	bad := filepath.Join(dir, "bad")
	writeFile(t, bad, strings.Repeat("x\n", 100))
	_, err = Load(bad, Config{})
	if n := strings.Count(fmt.Sprint(err), "\n") + 1; n != maxErrors+1 {
		t.Errorf("%d error lines, want %d", n, maxErrors+1)
	}
}

func TestLoadFormat(t *testing.T) {
	// Comments, blank lines, blanks around fields and CRLF are accepted,
	// as Mosquitto accepts them.
	f := load(t, "# c\n\n  \t\n"+strings.Replace(hashLine(t, cheap, "u", "pw"), ":", " :\t", 1)+"v:"+strings.TrimSuffix(hashLine(t, cheap, "x", "pw2")[2:], "\n")+"\r\n")
	wantVerdict(t, f, "u", "pw", authn.Allow)
	wantVerdict(t, f, "v", "pw2", authn.Allow)
	if f.Len() != 2 {
		t.Errorf("%d users", f.Len())
	}
}

func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, hashLine(t, cheap, "keep", "pw")+hashLine(t, cheap, "gone", "pw")+hashLine(t, cheap, "edit", "old"))
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	keep := strings.Split(string(must(os.ReadFile(path))), "\n")[0] + "\n"
	writeFile(t, path, keep+hashLine(t, cheap, "edit", "new")+hashLine(t, cheap, "new", "pw"))
	c, err := f.Reload()
	if err != nil {
		t.Fatal(err)
	}
	want := Change{Added: []string{"new"}, Removed: []string{"gone"}, Changed: []string{"edit"}}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("change %+v, want %+v", c, want)
	}
	wantVerdict(t, f, "gone", "pw", authn.Deny)
	wantVerdict(t, f, "edit", "new", authn.Allow)
	if c, err := f.Reload(); err != nil || !c.Empty() {
		t.Errorf("unchanged file: %+v %v", c, err)
	}

	// A bad file keeps the old users in force (never half a file).
	writeFile(t, path, hashLine(t, cheap, "evil", "pw")+"broken line\n")
	if _, err := f.Reload(); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Fatalf("bad file: %v", err)
	}
	wantVerdict(t, f, "evil", "pw", authn.Deny)
	wantVerdict(t, f, "edit", "new", authn.Allow)
	os.Remove(path)
	if _, err := f.Reload(); err == nil {
		t.Fatal("missing file reloaded")
	}
	wantVerdict(t, f, "edit", "new", authn.Allow)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	writeFile(t, path, hashLine(t, cheap, "a", "pw"))
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	type report struct {
		c   Change
		err error
	}
	tick := make(chan time.Time)
	reports := make(chan report, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.Watch(ctx, tick, func(c Change, err error) { reports <- report{c, err} }) })
	defer func() { cancel(); wg.Wait() }()

	// poll ticks once and returns what was reported by the time the
	// next tick is taken (Watch reports before it waits again).
	poll := func() []report {
		tick <- time.Time{}
		tick <- time.Time{}
		var got []report
		for len(reports) > 0 {
			got = append(got, <-reports)
		}
		return got
	}
	// Files are replaced by rename, so Watch never reads half of one.
	replace := func(content string) {
		writeFile(t, path+".new", content)
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	if got := poll(); len(got) != 0 {
		t.Fatalf("unchanged file reported %+v", got)
	}
	replace(hashLine(t, cheap, "b", "pw"))
	got := poll()
	if len(got) != 1 || got[0].err != nil || fmt.Sprint(got[0].c.Added, got[0].c.Removed) != "[b] [a]" {
		t.Fatalf("reports %+v", got)
	}
	replace("bad\n")
	if got := poll(); len(got) != 1 || got[0].err == nil {
		t.Fatalf("bad file: %+v", got)
	}
	if got := poll(); len(got) != 0 {
		t.Fatalf("the same bad file reported again: %+v", got)
	}
	wantVerdict(t, f, "b", "pw", authn.Allow)
}

func TestLimiterContext(t *testing.T) {
	l := NewLimiter(0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := l.Do(ctx, func() { ran = true }); !errors.Is(err, context.Canceled) || ran {
		t.Errorf("cancelled: err=%v ran=%v", err, ran)
	}
	if err := l.Do(context.Background(), func() { ran = true }); err != nil || !ran {
		t.Errorf("free slot: err=%v ran=%v", err, ran)
	}
}

// TestReloadConcurrent swaps generations while logins run (for -race): each
// login sees one whole generation.
func TestReloadConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	a, b := hashLine(t, cheap, "u", "one"), hashLine(t, cheap, "u", "two")
	writeFile(t, path, a)
	f, err := Load(path, Config{})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				one, two := auth(t, f, "u", "one").Verdict, auth(t, f, "u", "two").Verdict
				if one == authn.NotMine || two == authn.NotMine {
					t.Error("NotMine for a listed user")
				}
			}
		})
	}
	for i := range 20 {
		content := a
		if i%2 == 1 {
			content = b
		}
		writeFile(t, path+".new", content)
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// libargon2Hash is argon2id_hash_encoded from the reference implementation
// (the call Mosquitto 2.1 makes), through Python's ctypes.
const libargon2Hash = `import ctypes, sys
from ctypes import c_uint32 as u32, c_size_t as sz, c_char_p as s
lib = ctypes.CDLL("libargon2.so.1")
lib.argon2_encodedlen.restype = sz
lib.argon2_encodedlen.argtypes = [u32, u32, u32, u32, u32, ctypes.c_int]
lib.argon2id_hash_encoded.argtypes = [u32, u32, u32, s, sz, s, sz, sz, s, sz]
t, m, p, saltlen, hashlen = map(int, sys.argv[1:6])
pw, salt = sys.argv[6].encode(), bytes(range(saltlen))
n = lib.argon2_encodedlen(t, m, p, saltlen, hashlen, 2) + 1
buf = ctypes.create_string_buffer(n)
assert lib.argon2id_hash_encoded(t, m, p, pw, len(pw), salt, saltlen, hashlen, buf, n) == 0
print(buf.value.decode())
`

// TestLibargon2 checks argon2id PHC strings from the reference library
// with several parameter sets, including Mosquitto 2.1's.
func TestLibargon2(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	if _, err := exec.Command("python3", "-c", `import ctypes; ctypes.CDLL("libargon2.so.1")`).CombinedOutput(); err != nil {
		t.Skip("libargon2 is not installed (Debian package libargon2-1)")
	}
	var lines strings.Builder
	sets := [][5]int{{1, 47104, 1, 64, 64}, {3, 4096, 4, 8, 16}, {2, 1024, 2, 32, 128}}
	for i, p := range sets {
		args := []string{"-c", libargon2Hash}
		for _, v := range p {
			args = append(args, fmt.Sprint(v))
		}
		out, err := exec.Command("python3", append(args, fmt.Sprintf("pw %d", i))...).CombinedOutput()
		if err != nil {
			t.Fatalf("libargon2 %v: %v\n%s", p, err, out)
		}
		want := fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$", p[1], p[0], p[2])
		if !strings.HasPrefix(string(out), want) {
			t.Fatalf("libargon2 wrote %q", out)
		}
		fmt.Fprintf(&lines, "u%d:%s", i, out)
	}
	f := load(t, lines.String())
	for i := range sets {
		wantVerdict(t, f, fmt.Sprint("u", i), fmt.Sprintf("pw %d", i), authn.Allow)
		wantVerdict(t, f, fmt.Sprint("u", i), "pw", authn.Deny)
	}
}

// TestFIPSOnlyShortSalt runs itself again with GODEBUG=fips140=only: the
// 12-byte salts of Mosquitto 2.0's $7$ lines are then refused at load with
// a reason, instead of every login failing as a wrong password.
func TestFIPSOnlyShortSalt(t *testing.T) {
	if os.Getenv("MOAT_PASSWD_FIPS_CHILD") == "1" {
		_, err := Load(filepath.Join("testdata", "mosquitto20.passwd"), Config{})
		if err == nil || !strings.Contains(err.Error(), "FIPS 140-only") || !strings.Contains(err.Error(), ":3:") {
			t.Fatalf("FIPS 140-only mode: %v", err)
		}
		// Lines moat passwd writes in FIPS mode verify.
		f := load(t, hashLine(t, params{scheme: PBKDF2, iter: 1000, saltLen: 64, sumLen: 64}, "u", "a long enough password"))
		wantVerdict(t, f, "u", "a long enough password", authn.Allow)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFIPSOnlyShortSalt$")
	cmd.Env = append(os.Environ(), "MOAT_PASSWD_FIPS_CHILD=1", "GODEBUG=fips140=only")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
