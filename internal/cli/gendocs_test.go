package cli

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// manTree is the command tree the man pages describe: a fresh root with the
// completion command cobra adds when it executes.
func manTree() *cobra.Command {
	root := newRoot(Stdio{In: strings.NewReader(""), Out: &testutil.Buffer{}, Err: &testutil.Buffer{}})
	root.InitDefaultCompletionCmd()
	return root
}

// TestGenManEveryCommand checks that `moat gen man` writes exactly one page
// per available command (moat.1, moat-serve.1, moat-ca-init.1, …), and
// that each page names its command and every flag the command takes, so
// the pages cannot drift from the binary.
func TestGenManEveryCommand(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600") // 2026-01-01
	dir := t.TempDir()
	mustMoat(t, "gen", "man", dir)

	want := map[string]*cobra.Command{}
	visitAvailable(manTree(), func(c *cobra.Command) {
		want[strings.ReplaceAll(c.CommandPath(), " ", "-")+".1"] = c
	})
	for _, name := range []string{"moat.1", "moat-serve.1", "moat-version.1", "moat-ca-init.1", "moat-completion-bash.1"} {
		if want[name] == nil {
			t.Errorf("the command tree has no %s; the test's idea of the tree is wrong", name)
		}
	}
	if want["moat-gen.1"] != nil || want["moat-help.1"] != nil {
		t.Errorf("hidden gen or help command would get a man page")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		if want[e.Name()] == nil {
			t.Errorf("man page %s for no available command", e.Name())
		}
	}
	for name, c := range want {
		if !slices.Contains(got, name) {
			t.Errorf("no man page %s for %q", name, c.CommandPath())
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		title := strings.ToUpper(strings.ReplaceAll(c.CommandPath(), " ", "-"))
		if !strings.Contains(page, `.TH "`+title+`" "1" "Jan 2026" "Moat `) {
			t.Errorf("%s: no .TH header for %s (date from SOURCE_DATE_EPOCH)", name, title)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(page, `\fB--`+f.Name+`\fP`) {
				t.Errorf("%s does not document --%s", name, f.Name)
			}
		})
		if strings.Contains(page, "spf13") {
			t.Errorf("%s carries the generator's tag", name)
		}
	}
}

// TestCompletionScripts checks the completion scripts of every shell and,
// because the bash, zsh and fish scripts ask the binary for candidates
// at run time (`moat __complete …`), that the answer lists every available
// subcommand of every command.
func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out := mustMoat(t, "completion", sh)
		if len(out) < 1000 || !strings.Contains(out, "__complete") {
			t.Errorf("moat completion %s: %d bytes without a call of __complete", sh, len(out))
		}
	}
	dir := t.TempDir()
	mustMoat(t, "gen", "completion", dir)
	for _, f := range completionFiles {
		b, err := os.ReadFile(filepath.Join(dir, f.file))
		if err != nil || len(b) < 1000 {
			t.Errorf("gen completion: %s script %s: %d bytes, %v", f.shell, f.file, len(b), err)
		}
		if out := mustMoat(t, "completion", f.shell); out != string(b) {
			t.Errorf("gen completion's %s differs from moat completion %s", f.file, f.shell)
		}
	}

	checked := 0
	visitAvailable(manTree(), func(c *cobra.Command) {
		var subs []string
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				subs = append(subs, s.Name())
			}
		}
		if len(subs) == 0 {
			return
		}
		args := append([]string{"__complete"}, strings.Fields(c.CommandPath())[1:]...)
		out := mustMoat(t, append(args, "")...)
		var got []string
		for line := range strings.Lines(out) {
			name, _, _ := strings.Cut(strings.TrimSpace(line), "\t")
			got = append(got, name)
		}
		for _, s := range subs {
			if !slices.Contains(got, s) {
				t.Errorf("completing %q does not offer %q:\n%s", c.CommandPath(), s, out)
			}
		}
		if slices.Contains(got, "gen") {
			t.Errorf("completing %q offers the hidden gen command", c.CommandPath())
		}
		checked++
	})
	if checked < 5 {
		t.Errorf("checked the completions of only %d commands", checked)
	}
}

// TestVersionFlagMatchesCommand checks that moat --version and moat version
// print the same line, with the Go version and the FIPS 140-3 mode.
func TestVersionFlagMatchesCommand(t *testing.T) {
	cmd := mustMoat(t, "version")
	flag := mustMoat(t, "--version")
	if cmd != flag {
		t.Errorf("moat version printed %q, moat --version %q", cmd, flag)
	}
	if !strings.HasPrefix(cmd, "moat ") || !strings.Contains(cmd, " "+runtime.Version()+" ") ||
		!strings.HasSuffix(cmd, " fips140=off\n") {
		t.Errorf("moat version = %q, want moat VERSION %s OS/ARCH fips140=off", cmd, runtime.Version())
	}
}
