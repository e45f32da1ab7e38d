package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// The hidden `moat gen` command writes the man pages and shell completion
// scripts that `make install` ships. Both are generated from the command
// tree itself, so they cannot drift from the flags and subcommands the
// binary has.

func init() {
	register(func(stdio Stdio) *cobra.Command {
		gen := &cobra.Command{
			Use:    "gen",
			Short:  "Generate man pages and shell completions (used by make install)",
			Hidden: true,
		}
		gen.AddCommand(&cobra.Command{
			Use:   "man DIR",
			Short: "Write moat.1 and one moat-COMMAND.1 page per subcommand into DIR",
			Long: `Write moat.1 and one moat-COMMAND.1 page per subcommand into DIR.
The date in the pages is taken from SOURCE_DATE_EPOCH when it is set
(reproducible builds), else the current month.`,
			Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				n, err := genMan(cmd.Root(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(stdio.Err, "gen: wrote %d man pages to %s\n", n, args[0])
				return nil
			},
		})
		gen.AddCommand(&cobra.Command{
			Use:   "completion DIR",
			Short: "Write the bash (moat), zsh (_moat) and fish (moat.fish) completion scripts into DIR",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return genCompletions(cmd.Root(), args[0])
			},
		})
		return gen
	})
}

// genMan writes the man pages of root and every available subcommand into
// dir and returns how many it wrote.
func genMan(root *cobra.Command, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("gen: %w", err)
	}
	root.InitDefaultCompletionCmd() // a no-op once Execute has added it
	header := &doc.GenManHeader{Section: "1", Source: "Moat " + Version, Manual: "Moat Manual"}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return 0, fmt.Errorf("gen: man pages in %s: %w", dir, err)
	}
	n := 0
	visitAvailable(root, func(*cobra.Command) { n++ })
	return n, nil
}

// completionFiles names the completion script of each shell by the file
// name that shell's completion loader looks for.
var completionFiles = []struct {
	shell, file string
	gen         func(*cobra.Command, *bytes.Buffer) error
}{
	{"bash", "moat", func(c *cobra.Command, b *bytes.Buffer) error { return c.GenBashCompletionV2(b, true) }},
	{"zsh", "_moat", func(c *cobra.Command, b *bytes.Buffer) error { return c.GenZshCompletion(b) }},
	{"fish", "moat.fish", func(c *cobra.Command, b *bytes.Buffer) error { return c.GenFishCompletion(b, true) }},
}

// genCompletions writes the bash, zsh and fish completion scripts into dir.
func genCompletions(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	for _, f := range completionFiles {
		var b bytes.Buffer
		if err := f.gen(root, &b); err != nil {
			return fmt.Errorf("gen: %s completion: %w", f.shell, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.file), b.Bytes(), 0o644); err != nil {
			return fmt.Errorf("gen: %w", err)
		}
	}
	return nil
}

// visitAvailable calls fn for c and every descendant that gets a man page:
// the commands that are neither hidden, deprecated nor the help command.
func visitAvailable(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
			visitAvailable(sub, fn)
		}
	}
}
