package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/moatmq/moat/internal/admin"
)

// The admin API's client side, shared by the commands that call it
// (`moat reload --admin`, `moat cluster status`, `moat cluster
// remove-node`). Errors start with the command's name, prefix.

// adminTokenEnv names the environment variable those commands read the
// admin token from (never from the command line).
const adminTokenEnv = "MOAT_ADMIN_TOKEN"

// adminToken reads an admin token from file, else from $MOAT_ADMIN_TOKEN;
// missing is the end of the error when there is neither (which token is
// needed and how to make one).
func adminToken(prefix, file, missing string) (string, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: token file: %w", prefix, err)
		}
		if t := strings.TrimSpace(string(data)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("%s: token file %s is empty", prefix, file)
	}
	if t := strings.TrimSpace(os.Getenv(adminTokenEnv)); t != "" {
		return t, nil
	}
	return "", fmt.Errorf("%s: %s: --token-file FILE or $%s", prefix, missing, adminTokenEnv)
}

// adminRequest makes a request without a body to the admin API at addr
// (host:port, or a URL; a loopback host:port is reached over plain HTTP,
// any other over HTTPS) with the bearer token. HTTPS is verified with
// caFile, else DATA_DIR/ca/ca.pem when it exists, else the system's
// roots. It returns the status and up to 4 MiB of body.
func adminRequest(ctx context.Context, prefix, method, addr, dataDir, caFile, token, path string) (int, []byte, error) {
	base := addr
	if !strings.Contains(base, "://") {
		if admin.IsLoopback(base) {
			base = "http://" + base
		} else {
			base = "https://" + base
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		if p := filepath.Join(dataDir, "ca", "ca.pem"); fileExists(p) {
			caFile = p
		}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", prefix, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return 0, nil, fmt.Errorf("%s: %s holds no PEM certificate", prefix, caFile)
		}
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: --admin %q: %w", prefix, addr, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", prefix, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s: reading the answer: %w", prefix, err)
	}
	return resp.StatusCode, body, nil
}

// apiError is the message of an admin API error answer.
func apiError(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(body))
}
