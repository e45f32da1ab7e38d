package cli

import (
	"crypto/fips140"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is the release version; it is set at build time with
// -ldflags "-X github.com/moatmq/moat/internal/cli.Version=v1.2.3"
// (`make install` stamps the output of `git describe`). When it is
// left at "dev", a binary built by `go install …@VERSION` reports the module
// version it was built from.
var Version = "dev"

func init() {
	register(func(stdio Stdio) *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print the version of moat",
			Long: `Print the version of moat: the release, the source revision when the
build recorded one, the Go version, the platform and the FIPS 140-3 mode
(off, on, or only when GODEBUG=fips140=only enforces it). moat --version
prints the same line.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				fmt.Fprintln(stdio.Out, versionLine())
				return nil
			},
		}
	})
}

// versionLine is the one line `moat version` and `moat --version` print:
// "moat VERSION [REVISION] GOVERSION OS/ARCH fips140=off|on|only".
func versionLine() string {
	v, rev := Version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = " " + s.Value
			}
		}
	}
	fips := "off"
	switch {
	case fips140.Enforced():
		fips = "only"
	case fips140.Enabled():
		fips = "on"
	}
	if fips != "off" {
		fips += " (Go Cryptographic Module " + fips140.Version() + ")"
	}
	return fmt.Sprintf("moat %s%s %s %s/%s fips140=%s", v, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH, fips)
}
