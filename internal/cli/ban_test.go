package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/guard"
)

// banCLI runs `moat ban ...` in-process and returns stdout, stderr and
// the exit status.
func banCLI(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"ban"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return out.String(), errb.String(), code
}

func TestBanCommand(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	fp := strings.Repeat("AB:", 31) + "AB"
	var ids []string
	idRe := regexp.MustCompile(`^ban ([0-9a-f]{16}) added`)
	for _, args := range [][]string{
		{"--ip", "10.0.0.0/8", "--for", "1h", "--reason", "abuse report"},
		{"--ip", "2001:db8::/32"},
		{"--client-id", "rogue-1"},
		{"--username", "eve"},
		{"--cert-fingerprint", fp},
		{"--serial", "0A:FF"},
		{"--client-id", "evil\x1b[2J"},
	} {
		out, errs, code := banCLI(append([]string{"add", "--data", data}, args...)...)
		if code != 0 {
			t.Fatalf("ban add %v: exit %d: %s", args, code, errs)
		}
		m := idRe.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("ban add %v printed %q", args, out)
		}
		ids = append(ids, m[1])
	}
	path := filepath.Join(data, guard.BansFileName)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bans file: %v %v; want mode 0600", fi.Mode(), err)
	}
	bans, err := guard.File{Path: path}.Read()
	if err != nil || len(bans) != 7 {
		t.Fatalf("file holds %d bans, %v", len(bans), err)
	}
	out, errs, code := banCLI("list", "--data", data)
	if !strings.Contains(errs, "no running broker answers") {
		t.Errorf("list without a broker does not say so on stderr: %q", errs)
	}
	for _, want := range []string{"10.0.0.0/8", "2001:db8::/32", "rogue-1", "eve", strings.Repeat("ab", 32), "aff", "abuse report", "never", `"evil\x1b[2J"`} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	if code != 0 || strings.Contains(out, "\x1b") {
		t.Errorf("list exit %d or raw escape in output:\n%q", code, out)
	}
	if out, errs, code := banCLI("remove", ids[2], "--data", data); code != 0 || !strings.Contains(out, "rogue-1") {
		t.Fatalf("remove: %d %s %s", code, out, errs)
	}
	if out, _, _ := banCLI("list", "--data", data); strings.Contains(out, "rogue-1") {
		t.Error("removed ban still listed")
	}
}

func TestBanCommandErrors(t *testing.T) {
	data := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"add", "--data", data}, "exactly one of"},
		{[]string{"add", "--data", data, "--ip", "1.2.3.4", "--username", "x"}, "exactly one of"},
		{[]string{"add", "--data", data, "--ip", "1.2.3.400"}, "not an address or CIDR prefix"},
		{[]string{"add", "--data", data, "--cert-fingerprint", "abcd"}, "not 64 hex digits"},
		{[]string{"add", "--data", data, "--ip", "1.2.3.4", "--for", "-1h"}, "--for must be positive"},
		{[]string{"remove", "0123456789abcdef", "--data", data}, "no ban with ID"},
	} {
		_, errs, code := banCLI(tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tc.args, code, errs, tc.want)
		}
	}
	// A damaged bans file is reported, not overwritten.
	path := filepath.Join(data, guard.BansFileName)
	os.WriteFile(path, []byte("{garbage"), 0o600)
	if _, errs, code := banCLI("add", "--data", data, "--username", "x"); code == 0 || !strings.Contains(errs, "not valid") {
		t.Errorf("add over a damaged file: exit %d, %q", code, errs)
	}
	if b, _ := os.ReadFile(path); string(b) != "{garbage" {
		t.Error("damaged file overwritten")
	}
}

// TestBanCommandFollowsConfig: with -c, a stopped broker's ban list is
// changed where that configuration keeps it (defense.bans_file under its
// data_dir's broker) and within its defense.max_bans.
func TestBanCommandFollowsConfig(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "state")
	bans := filepath.Join(dir, "my-bans.json")
	conf := filepath.Join(dir, "moat.yaml")
	writeFile(t, conf, "data_dir: "+data+"\ndefense:\n  bans_file: "+bans+"\n  max_bans: 2\n")
	for _, id := range []string{"a", "b"} {
		if _, errs, code := banCLI("add", "-c", conf, "--client-id", id); code != 0 {
			t.Fatalf("ban add %s: exit %d: %s", id, code, errs)
		}
	}
	if _, errs, code := banCLI("add", "-c", conf, "--client-id", "c"); code == 0 || !strings.Contains(errs, "already holds 2 bans") {
		t.Fatalf("a third ban past max_bans 2: exit %d: %s", code, errs)
	}
	got, err := guard.File{Path: bans}.Read()
	if err != nil || len(got) != 2 {
		t.Fatalf("%s holds %d bans, %v", bans, len(got), err)
	}
	if _, err := os.Stat(filepath.Join(data, guard.BansFileName)); !os.IsNotExist(err) {
		t.Fatalf("the default bans file was written: %v", err)
	}
	if out, _, code := banCLI("list", "-c", conf); code != 0 || !strings.Contains(out, "a") || !strings.Contains(out, "b") {
		t.Fatalf("list -c: exit %d:\n%s", code, out)
	}

	// mosquitto.conf without persistence: DATA_DIR/bans.json of its data
	// directory (--data wins over the file's).
	mconf := filepath.Join(dir, "mosquitto.conf")
	writeFile(t, mconf, "listener 1883 127.0.0.1\nallow_anonymous true\n")
	other := filepath.Join(dir, "other")
	if _, errs, code := banCLI("add", "-c", mconf, "--data", other, "--username", "eve"); code != 0 {
		t.Fatalf("ban add with mosquitto.conf: exit %d: %s", code, errs)
	}
	if got, err := (guard.File{Path: filepath.Join(other, guard.BansFileName)}).Read(); err != nil || len(got) != 1 {
		t.Fatalf("DATA/bans.json holds %d bans, %v", len(got), err)
	}
}
