package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/passwd"
)

// runPasswdCmd runs moat passwd in-process with stdin.
func runPasswdCmd(t *testing.T, stdin string, args ...string) (code int, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), append([]string{"passwd"}, args...), Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	return code, out.String() + errb.String()
}

func passwdVerdict(t *testing.T, path, user, pw string) authn.Verdict {
	t.Helper()
	f, err := passwd.Load(path, passwd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.Authenticate(context.Background(), &authn.Request{Username: user, Password: authn.NewPassword([]byte(pw)), HasPassword: true})
	if err != nil {
		t.Fatal(err)
	}
	return res.Verdict
}

func TestPasswdCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	if code, out := runPasswdCmd(t, "pw1\n", path, "alice"); code == 0 || !strings.Contains(out, "-c") {
		t.Fatalf("missing file without -c: %d %s", code, out)
	}
	if code, out := runPasswdCmd(t, "pw1\n", "-c", path, "alice"); code != 0 {
		t.Fatalf("-c: %d %s", code, out)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode())
	}
	if code, out := runPasswdCmd(t, "pw2\r\nignored\n", path, "bob"); code != 0 {
		t.Fatalf("add: %d %s", code, out)
	}
	code, out := runPasswdCmd(t, "", "-b", path, "carol", "pw3")
	if code != 0 || !strings.Contains(out, "process list") {
		t.Fatalf("-b: %d %q, want a warning", code, out)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "alice:$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("file:\n%s", data)
	}
	for u, pw := range map[string]string{"alice": "pw1", "bob": "pw2", "carol": "pw3"} {
		if v := passwdVerdict(t, path, u, pw); v != authn.Allow {
			t.Errorf("%s: %v", u, v)
		}
	}
	if code, out := runPasswdCmd(t, "", "-D", path, "bob"); code != 0 {
		t.Fatalf("-D: %d %s", code, out)
	}
	if v := passwdVerdict(t, path, "bob", "pw2"); v != authn.Deny {
		t.Errorf("deleted bob: %v", v)
	}
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{path, "dave"}, "no password on standard input"},
		{"\n", []string{path, "dave"}, "no password"},
		{"", []string{"-D", path, "nobody"}, "not in"},
		{"", []string{"-U", "-c", path}, "-U takes no other flag"},
		{"", []string{"-D", "-b", path, "u", "p"}, "-D cannot be combined"},
		{"", []string{path}, "want FILE USER"},
		{"", []string{"-b", path, "u"}, "want -b FILE USER PASSWORD"},
		{"x\n", []string{path, "a:b"}, "':'"},
	} {
		if code, out := runPasswdCmd(t, tc.stdin, tc.args...); code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: %d %q, want %q", tc.args, code, out, tc.want)
		}
	}
	// -c replaces the file.
	if code, out := runPasswdCmd(t, "new\n", "-c", path, "erin"); code != 0 {
		t.Fatalf("-c again: %d %s", code, out)
	}
	if v := passwdVerdict(t, path, "alice", "pw1"); v != authn.Deny {
		t.Errorf("-c kept alice: %v", v)
	}
}

// TestPasswdMosquittoFile: moat passwd edits a file made by Debian's
// mosquitto_passwd, keeping its lines as they were, and -U hashes
// plain-text lines once (mosquitto_passwd -U would hash the hashes).
func TestPasswdMosquittoFile(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_passwd")
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	if out, err := run(t, 10*time.Second, "mosquitto_passwd", "-c", "-b", path, "mosq", "mosq pw"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	before, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append(before, "plain: plain pw\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runPasswdCmd(t, "moat pw\n", path, "moat")
	if code != 0 || !strings.Contains(out, "plain-text") {
		t.Fatalf("add: %d %q, want a plain-text warning", code, out)
	}
	for range 2 {
		if code, out := runPasswdCmd(t, "", "-U", path); code != 0 {
			t.Fatalf("-U: %d %s", code, out)
		}
	}
	after, _ := os.ReadFile(path)
	if !bytes.HasPrefix(after, before) {
		t.Errorf("the mosquitto_passwd line changed:\n%s\n%s", before, after)
	}
	for u, pw := range map[string]string{"mosq": "mosq pw", "moat": "moat pw", "plain": "plain pw"} {
		if v := passwdVerdict(t, path, u, pw); v != authn.Allow {
			t.Errorf("%s: %v", u, v)
		}
	}
}

// TestPasswdFIPS: in FIPS 140 mode moat passwd writes $7$ PBKDF2-SHA512
// lines with a 64-byte salt (FIPS wants at least 16 bytes; Mosquitto 2.1
// reads 12 or 64, Mosquitto 2.0 only 12). Python's hashlib checks the line
// as an independent implementation.
func TestPasswdFIPS(t *testing.T) {
	t.Parallel()
	needTool(t, "python3")
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	cmd := exec.Command(moatBin, "passwd", "-c", path, "fips")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on")
	cmd.Stdin = strings.NewReader("fips pw\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("moat passwd in FIPS mode: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "fips:$7$210000$") {
		t.Fatalf("FIPS mode wrote %q", data)
	}
	if v := passwdVerdict(t, path, "fips", "fips pw"); v != authn.Allow {
		t.Fatalf("moat: %v", v)
	}
	check := `import base64, hashlib, sys
u, h = open(sys.argv[1]).read().strip().split(":", 1)
_, _, it, salt, want = h.split("$")
salt = base64.b64decode(salt)
assert len(salt) == 64, len(salt)
assert hashlib.pbkdf2_hmac("sha512", b"fips pw", salt, int(it)) == base64.b64decode(want)
`
	if out, err := run(t, 30*time.Second, "python3", "-c", check, path); err != nil {
		t.Fatalf("python3 rejects the line: %v\n%s", err, out)
	}
}

// ptyDriver runs argv[1:] on a pseudo-terminal, answers each prompt named
// in the pairs "prompt=answer" that follow "--", and prints the output.
const ptyDriver = `import os, pty, sys
i = sys.argv.index("--")
cmd, pairs = sys.argv[1:i], [a.split("=", 1) for a in sys.argv[i+1:]]
pid, fd = pty.fork()
if pid == 0:
    os.execv(cmd[0], cmd)
out = b""
for prompt, answer in pairs:
    while prompt.encode() not in out:
        d = os.read(fd, 1024)
        if not d:
            sys.exit("no prompt %r in %r" % (prompt, out))
        out += d
    out = out.replace(prompt.encode(), b"<" + prompt.encode() + b">", 1)
    os.write(fd, answer.encode() + b"\n")
try:
    while True:
        d = os.read(fd, 1024)
        if not d:
            break
        out += d
except OSError:
    pass
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(st))
`

// TestPasswdTerminal: on a terminal the password is asked twice and the
// two answers must match.
func TestPasswdTerminal(t *testing.T) {
	t.Parallel()
	needTool(t, "python3")
	path := filepath.Join(t.TempDir(), "passwd")
	out, err := run(t, 30*time.Second, "python3", "-c", ptyDriver, moatBin, "passwd", "-c", path, "tty",
		"--", "Password: =tty pw", "Reenter password: =tty pw")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if v := passwdVerdict(t, path, "tty", "tty pw"); v != authn.Allow {
		t.Fatalf("%v\n%s", v, out)
	}
	out, err = run(t, 30*time.Second, "python3", "-c", ptyDriver, moatBin, "passwd", path, "tty",
		"--", "Password: =one", "Reenter password: =two")
	if err == nil || !strings.Contains(out, "do not match") {
		t.Fatalf("mismatch: %v\n%s", err, out)
	}
	if v := passwdVerdict(t, path, "tty", "tty pw"); v != authn.Allow {
		t.Fatalf("a failed change altered the file: %v", v)
	}
}
