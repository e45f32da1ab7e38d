package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/moatmq/moat/internal/audit"
)

// caAuditFile is the audit log `moat ca` records issuance and revocation
// in: a chain of its own beside the broker's audit.log, signed with the
// same key (DATA_DIR/audit.key), so that a running broker and `moat ca`
// never write one chain at once. Each command opens it under a lock
// (ca-audit.log.lock), records and closes it with a checkpoint, so the
// file always verifies: moat audit verify DATA_DIR/ca-audit.log.
const caAuditFile = "ca-audit.log"

// caAudit records ev for the CA in caDir when its data directory (the
// parent of caDir, moat-data for the default moat-data/ca) holds a broker's
// audit key; otherwise there is no audit log to join and it does nothing.
// A failure to record is returned: the certificate was issued or revoked,
// and the operator must hear that the trail lacks it.
func caAudit(caDir string, ev audit.Event) error {
	dataDir := filepath.Dir(filepath.Clean(caDir))
	if _, err := os.Stat(filepath.Join(dataDir, audit.PubFile)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	unlock, err := lockPath(filepath.Join(dataDir, caAuditFile+".lock"))
	if err != nil {
		return fmt.Errorf("audit: locking %s: %w", caAuditFile, err)
	}
	defer unlock()
	l, err := audit.Open(audit.Config{Dir: dataDir, File: filepath.Join(dataDir, caAuditFile)})
	if err != nil {
		return err
	}
	l.Record(ev)
	return l.Close()
}
