package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

type reloadOptions struct {
	dataDir   string
	admin     string
	tokenFile string
	caFile    string
}

func init() { register(newReloadCommand) }

func newReloadCommand(stdio Stdio) *cobra.Command {
	var o reloadOptions
	cmd := &cobra.Command{
		Use:   "reload [--data DIR] [--admin ADDR [--token-file FILE] [--cacert FILE]]",
		Short: "Make the running broker reload its configuration",
		Long: `Make the running broker re-read its configuration, as SIGHUP does.

Without --admin, the broker is found through DIR/` + pidFileName + `, which moat serve
writes at start (mode 0600) and removes at stop, and is sent SIGHUP; it logs
what changed or why it refused the new configuration.

With --admin ADDR (host:port or a URL), the admin API's
POST /api/v1/config/reload is called with an operator token read from the
file --token-file names or from $` + adminTokenEnv + ` (never from the
command line), and the outcome is printed. HTTPS is verified with --cacert,
else DIR/ca/ca.pem when it exists; a loopback ADDR without a scheme is
reached over plain HTTP. In a cluster, a reload applied on the node whose
changed access file the cluster refused (too many security changes waiting
for an unreachable cluster) prints "configuration reloaded on this node
only" and the refusal, and exits with status 1.

What can change live and what needs a restart: docs/operations.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.admin != "" {
				return reloadAdmin(cmd.Context(), stdio, o)
			}
			return reloadSignal(stdio, o.dataDir)
		},
	}
	cmd.Flags().StringVar(&o.dataDir, "data", "moat-data", "data `DIR` of the running broker")
	cmd.Flags().StringVar(&o.admin, "admin", "", "reload through the admin API at `ADDR` instead of a signal")
	cmd.Flags().StringVar(&o.tokenFile, "token-file", "", "`FILE` holding an operator token (default: $"+adminTokenEnv+")")
	cmd.Flags().StringVar(&o.caFile, "cacert", "", "CA `FILE` to verify the admin API's certificate (default DIR/ca/ca.pem)")
	return cmd
}

// reloadSignal sends SIGHUP to the broker named by DIR/moat.pid.
func reloadSignal(stdio Stdio, dataDir string) error {
	path := filepath.Join(dataDir, pidFileName)
	pid, err := readPIDFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reload: %s does not exist: no broker is running with data directory %s (give --data, or use --admin)", path, dataDir)
	}
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if !processAlive(pid) {
		return fmt.Errorf("reload: %s names process %d, which is not running; the broker stopped without removing it", path, pid)
	}
	if !isServeProcess(pid) {
		return fmt.Errorf("reload: %s names process %d, which is not moat serve; refusing to signal it (remove the stale file)", path, pid)
	}
	if err := signalReload(pid); err != nil {
		return fmt.Errorf("reload: signalling process %d: %w", pid, err)
	}
	fmt.Fprintf(stdio.Out, "sent SIGHUP to the broker (pid %d); its log says what changed or why the new configuration was refused\n", pid)
	return nil
}

// isServeProcess checks, where /proc tells, that pid runs `moat serve`, so
// that a stale pid file never gets an unrelated process signalled.
func isServeProcess(pid int) bool {
	if runtime.GOOS != "linux" {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, arg := range strings.Split(string(data), "\x00") {
		if arg == "serve" {
			return true
		}
	}
	return false
}

// reloadAdmin calls POST /api/v1/config/reload.
func reloadAdmin(ctx context.Context, stdio Stdio, o reloadOptions) error {
	token, err := adminToken("reload", o.tokenFile, "--admin needs an operator token")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	code, body, err := adminRequest(ctx, "reload", http.MethodPost, o.admin, o.dataDir, o.caFile, token, "/api/v1/config/reload")
	if err != nil {
		return err
	}
	if code == http.StatusServiceUnavailable {
		// Applied on the node, not sent to the rest of the cluster.
		var a struct {
			Reloaded bool `json:"reloaded"`
		}
		if json.Unmarshal(body, &a) == nil && a.Reloaded {
			fmt.Fprintln(stdio.Out, "configuration reloaded on this node only")
			return fmt.Errorf("reload: %s", apiError(body))
		}
	}
	if code != http.StatusOK {
		return fmt.Errorf("reload: the broker answered %d %s: %s", code, http.StatusText(code), apiError(body))
	}
	fmt.Fprintln(stdio.Out, "configuration reloaded")
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
