package cli

import (
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/moatmq/moat/e2e"
)

// A member key directory (--keys DIR, written by `moat keys fetch --dir
// DIR`) holds everything a member of end-to-end key groups needs:
//
//	DIR/member       the member ID (the identity of its certificate), one line
//	DIR/member.key   the member's HPKE private key (mode 0600)
//	DIR/bundle       the latest key bundle (sealed to member.key, signed)
//	DIR/service-key  the pinned signing key of the key service
//	DIR/seq          the sender's persisted sequence numbers (nonces)
const (
	memberIDFile   = "member"
	memberKeyName  = "member.key"
	memberBundle   = "bundle"
	memberPinFile  = "service-key"
	memberSeqFile  = "seq"
	maxMemberIDLen = 255
)

// memberKeys is a member's key material loaded from a key directory. The
// keyring is updated in place when a newer bundle arrives (over MQTT); it
// is safe for concurrent use.
type memberKeys struct {
	dir     string
	id      string
	key     *e2e.MemberKey
	service ed25519.PublicKey
	ring    *e2e.Keyring
	mu      sync.Mutex // serializes applyBundle
}

// loadMemberKeys reads a member key directory and opens its bundle.
func loadMemberKeys(dir string) (*memberKeys, error) {
	idb, err := os.ReadFile(filepath.Join(dir, memberIDFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("keys: %s is not a member key directory (no %s file); create it with `moat keys fetch --server URL --dir %s …`", dir, memberIDFile, dir)
		}
		return nil, fmt.Errorf("keys: %w", err)
	}
	id := strings.TrimSpace(string(idb))
	if id == "" || len(id) > maxMemberIDLen {
		return nil, fmt.Errorf("keys: %s holds no member ID", filepath.Join(dir, memberIDFile))
	}
	kb, err := os.ReadFile(filepath.Join(dir, memberKeyName))
	if err != nil {
		return nil, fmt.Errorf("keys: reading member key: %w", err)
	}
	mk, err := e2e.ParseMemberKeyPEM(kb)
	clear(kb)
	if err != nil {
		return nil, err
	}
	svc, err := readServicePin(filepath.Join(dir, memberPinFile))
	if err != nil {
		return nil, err
	}
	m := &memberKeys{dir: dir, id: id, key: mk, service: svc, ring: &e2e.Keyring{}}
	raw, err := os.ReadFile(filepath.Join(dir, memberBundle))
	if err != nil {
		return nil, fmt.Errorf("keys: reading bundle (run `moat keys fetch` first): %w", err)
	}
	b, err := e2e.OpenBundle(raw, mk, id, svc)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", filepath.Join(dir, memberBundle), err)
	}
	if err := m.ring.ApplyBundle(b); err != nil {
		return nil, err
	}
	return m, nil
}

// readServicePin reads a pinned key service signing key.
func readServicePin(path string) (ed25519.PublicKey, error) {
	pb, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: reading pinned service key (run `moat keys fetch --server URL` first): %w", err)
	}
	blk, _ := pem.Decode(pb)
	if blk == nil || blk.Type != "MOAT KEY SERVICE KEY" || len(blk.Bytes) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("keys: %s is not a pinned service key", path)
	}
	return ed25519.PublicKey(blk.Bytes), nil
}

// bundleUpdate is the outcome of applyBundle.
type bundleUpdate struct {
	serial  uint64
	applied bool // false: not newer than the bundle held
	epochs  int
	senders int
}

// applyBundle verifies raw (signature by the pinned service key, addressed
// to this member, decrypts with its key), and when it is newer than the
// bundle held applies it to the keyring and writes it to DIR/bundle.
func (m *memberKeys) applyBundle(raw []byte) (bundleUpdate, error) {
	b, err := e2e.OpenBundle(raw, m.key, m.id, m.service)
	if err != nil {
		return bundleUpdate{}, err
	}
	u := bundleUpdate{serial: b.Serial, epochs: len(b.EpochKeys), senders: len(b.SenderKeys)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.Serial <= m.ring.Serial() {
		return u, nil
	}
	if err := m.ring.ApplyBundle(b); err != nil {
		return u, err
	}
	u.applied = true
	return u, writeFileSynced(filepath.Join(m.dir, memberBundle), raw, 0o600)
}

// sealer returns a group sealer for this member, with sequence numbers
// persisted in DIR/seq.
func (m *memberKeys) sealer(signer *e2e.Signer, block uint64) (*e2e.GroupSealer, error) {
	seq, err := e2e.OpenFileSequenceStore(filepath.Join(m.dir, memberSeqFile))
	if err != nil {
		return nil, err
	}
	return e2e.NewGroupSealer(e2e.SealerConfig{Sender: m.id, Keys: m.ring, Sequence: seq, Signer: signer, Block: block})
}
