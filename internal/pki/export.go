package pki

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
)

// Files Export writes. They hold only public material.
const (
	// ExportRoot is the trust anchor: the root certificate (as DIR/ca.pem).
	ExportRoot = "ca.pem"
	// ExportBundle is the root followed by every intermediate that still
	// issues or whose certificates are still valid, for services that want
	// the whole chain in their CA file.
	ExportBundle = "ca-bundle.pem"
	// ExportCRL holds the current CRL of each such intermediate.
	ExportCRL = "crl.pem"
	// ExportRootCRL is the root's CRL, which lists revoked intermediates.
	ExportRootCRL = "root-crl.pem"
)

// Export writes the CA's public files into dir for services that run as
// another user (Mosquitto as "mosquitto", a load balancer) and cannot
// read the CA directory, which is private (0700). dir is created with
// mode 0755 when missing; files are written with mode 0644, each
// atomically (a reader sees the old or the new file, never a part), and
// only when their content changed. The CRL is regenerated first when it
// is past half of its validity. It returns the names of the files it
// rewrote.
func (ca *CA) Export(dir string) ([]string, error) {
	if abs, err := filepath.Abs(dir); err == nil {
		if own, err := filepath.Abs(ca.dir); err == nil && abs == own {
			return nil, fmt.Errorf("pki: export: %s is the CA directory; export into a directory of its own, e.g. /etc/moat/ca", dir)
		}
	}
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		if err := mkdirAllReadable(dir); err != nil {
			return nil, fmt.Errorf("pki: export: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("pki: export: %w", err)
	} else if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o005 != 0o005 {
		ca.cfg.logger().Warn("pki: export directory is not readable by other users; services running as another user may not reach the files", "dir", dir, "mode", st.Mode().Perm().String())
	}
	crls, err := ca.exportCRLs()
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		data []byte
	}{
		{ExportRoot, EncodeCertificatesPEM(ca.root)},
		{ExportBundle, EncodeCertificatesPEM(append([]*x509.Certificate{ca.root, ca.inter}, ca.Retired()...)...)},
		{ExportCRL, crls},
	}
	if root, err := ca.RootCRLPEM(); err == nil {
		files = append(files, struct {
			name string
			data []byte
		}{ExportRootCRL, root})
	}
	var changed []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, f.data) {
			if st, err := os.Stat(p); err == nil && st.Mode().Perm() == 0o644 {
				continue
			}
		}
		if err := writeFileAtomic(p, f.data, 0o644); err != nil {
			return changed, err
		}
		changed = append(changed, f.name)
	}
	return changed, nil
}

// exportCRLs returns the CRLs of every live intermediate as PEM.
func (ca *CA) exportCRLs() ([]byte, error) { return ca.CRLPEM() }

// mkdirAllReadable creates dir and its missing parents with mode 0755,
// whatever the umask.
func mkdirAllReadable(dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !os.IsNotExist(err) {
			return err
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		if err := os.Chmod(missing[i], 0o755); err != nil {
			return err
		}
	}
	return nil
}
