package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is the release version; it is set at build time with
// -ldflags "-X github.com/moatmq/moat/internal/cli.Version=v1.2.3".
var Version = "dev"

func init() {
	register(func(stdio Stdio) *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print the version of moat",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				rev := ""
				if bi, ok := debug.ReadBuildInfo(); ok {
					for _, s := range bi.Settings {
						if s.Key == "vcs.revision" {
							rev = " " + s.Value
						}
					}
				}
				fmt.Fprintf(stdio.Out, "moat %s%s %s %s/%s\n", Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
				fmt.Fprintln(stdio.Out, fipsState())
				return nil
			},
		}
	})
}
