// Package cli wires Moat's packages into the moat command. It is the only
// package that knows about all the others: every subcommand lives in a file
// of its own and builds its dependencies from flags and configuration.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Stdio holds the standard streams a command reads and writes. Tests pass
// buffers; main passes the process's streams.
type Stdio struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs the moat command line with args (without the program name) and
// returns the process exit status. ctx is cancelled on SIGINT/SIGTERM.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	root := newRoot(stdio)
	root.SetArgs(args)
	root.SetIn(stdio.In)
	root.SetOut(stdio.Out)
	root.SetErr(stdio.Err)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if q, ok := errors.AsType[*quietExit](err); ok {
		return q.code // --quiet
	}
	fmt.Fprintf(stdio.Err, "moat: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// subcommands registers constructors for the top-level commands; each
// subcommand file adds itself in an init function so that files can be
// added without touching this one.
var subcommands []func(Stdio) *cobra.Command

func register(f func(Stdio) *cobra.Command) { subcommands = append(subcommands, f) }

func newRoot(stdio Stdio) *cobra.Command {
	root := &cobra.Command{
		Use:           "moat",
		Short:         "Moat is a security-first MQTT broker and toolkit",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionLine(),
		Long: `Moat is a security-first MQTT broker and toolkit in one binary: the
broker (moat serve), its certificate authority (moat ca), device
enrollment, publish and subscribe clients, end-to-end payload encryption
and the operator's tools. Every command has a page of its own,
moat-COMMAND(1), and --help.`,
		// No "auto generated" footer with the day of generation in the man
		// pages; their month comes from SOURCE_DATE_EPOCH (make install).
		DisableAutoGenTag: true,
	}
	root.SetVersionTemplate("{{.Version}}\n") // the same line as `moat version`
	for _, f := range subcommands {
		root.AddCommand(f(stdio))
	}
	return root
}
