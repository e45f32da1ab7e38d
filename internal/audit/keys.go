package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// File names in the data directory.
const (
	KeyFile    = "audit.key" // the current signing key, mode 0600
	PubFile    = "audit.pub" // the public keys: the first epoch's, then each rotation signed by the one before
	keyHeader  = "moat-audit-key v1"
	pubHeader  = "moat-audit-pub v1"
	newKeyFile = "audit.key.new"
)

// Domain separation of the two kinds of signature.
const (
	checkpointDomain = "moat-audit-checkpoint-v1\n"
	rotateDomain     = "moat-audit-rotate-v1\n"
)

// signer is the key of one epoch.
type signer struct {
	epoch uint64
	priv  ed25519.PrivateKey
}

func (s *signer) public() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// checkpointMessage is what a checkpoint signature covers: the domain
// string followed by the canonical encoding of the checkpoint entry
// without its "sig" field.
func checkpointMessage(canonicalWithoutSig []byte) []byte {
	return append([]byte(checkpointDomain), canonicalWithoutSig...)
}

// rotateMessage is what the previous epoch's key signs in audit.pub to
// introduce the key of epoch.
func rotateMessage(epoch uint64, pub ed25519.PublicKey) []byte {
	m := []byte(rotateDomain)
	m = binary.BigEndian.AppendUint64(m, epoch)
	return append(m, pub...)
}

var b64 = base64.StdEncoding

// readKey reads a key file.
func readKey(path string) (*signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || lines[0] != keyHeader || !strings.HasPrefix(lines[1], "epoch ") {
		return nil, fmt.Errorf("audit: %s is not a moat audit key file", path)
	}
	epoch, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "epoch "), 10, 64)
	if err != nil || epoch == 0 {
		return nil, fmt.Errorf("audit: %s: bad epoch", path)
	}
	seed, err := b64.DecodeString(lines[2])
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("audit: %s: bad key", path)
	}
	return &signer{epoch: epoch, priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// writeKey writes s to path (mode 0600) through a temporary file and
// fsyncs it.
func writeKey(path string, s *signer) error {
	data := fmt.Sprintf("%s\nepoch %d\n%s\n", keyHeader, s.epoch, b64.EncodeToString(s.priv.Seed()))
	return writeFileSync(path, []byte(data), 0o600)
}

// writeFileSync replaces path atomically with data and syncs it.
func writeFileSync(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// KeyRing holds the public keys of the epochs a verifier trusts: the
// anchor (the first key of a public key file) and every later key whose
// rotation signature chains to it.
type KeyRing struct {
	anchor uint64
	keys   map[uint64]ed25519.PublicKey
}

// Key returns the public key of epoch.
func (r *KeyRing) Key(epoch uint64) (ed25519.PublicKey, bool) {
	k, ok := r.keys[epoch]
	return k, ok
}

// Anchor returns the epoch of the trusted key.
func (r *KeyRing) Anchor() uint64 { return r.anchor }

// add records the key of epoch, introduced by the key of epoch-1.
func (r *KeyRing) add(epoch uint64, pub ed25519.PublicKey) { r.keys[epoch] = pub }

// ReadPublicKeys reads a public key file (audit.pub). Its first key is the
// trust anchor; every following line introduces the next epoch's key with
// a signature by the key before it, and a line whose signature does not
// verify is an error.
func ReadPublicKeys(path string) (*KeyRing, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: public key: %w (pass the audit.pub kept when the log was created with --key)", err)
	}
	defer f.Close()
	r, err := parsePublicKeys(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("audit: %s: %w", path, err)
	}
	return r, nil
}

func parsePublicKeys(rd io.Reader) (*KeyRing, error) {
	sc := bufio.NewScanner(rd)
	ring := &KeyRing{keys: map[uint64]ed25519.PublicKey{}}
	n := 0
	var last uint64
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		n++
		if n == 1 {
			if line != pubHeader {
				return nil, errors.New("not a moat audit public key file")
			}
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Fields(line)
		if len(parts) < 3 || parts[0] != "key" {
			return nil, fmt.Errorf("line %d: want \"key EPOCH PUBLIC [SIGNATURE]\"", n)
		}
		epoch, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil || epoch == 0 {
			return nil, fmt.Errorf("line %d: bad epoch", n)
		}
		pub, err := b64.DecodeString(parts[2])
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("line %d: bad public key", n)
		}
		if last == 0 {
			// The anchor: trusted as it is.
			ring.anchor, last = epoch, epoch
			ring.add(epoch, pub)
			continue
		}
		if epoch != last+1 || len(parts) != 4 {
			return nil, fmt.Errorf("line %d: key of epoch %d must follow epoch %d with its rotation signature", n, epoch, last)
		}
		sig, err := b64.DecodeString(parts[3])
		if err != nil || !ed25519.Verify(ring.keys[last], rotateMessage(epoch, pub), sig) {
			return nil, fmt.Errorf("line %d: the key of epoch %d is not signed by the key of epoch %d", n, epoch, last)
		}
		ring.add(epoch, pub)
		last = epoch
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if last == 0 {
		return nil, errors.New("no key")
	}
	return ring, nil
}

// pubAnchorLine and pubRotationLine are the lines of a public key file.
func pubAnchorLine(s *signer) string {
	return fmt.Sprintf("key %d %s\n", s.epoch, b64.EncodeToString(s.public()))
}

func pubRotationLine(old, next *signer) string {
	sig := ed25519.Sign(old.priv, rotateMessage(next.epoch, next.public()))
	return fmt.Sprintf("key %d %s %s\n", next.epoch, b64.EncodeToString(next.public()), b64.EncodeToString(sig))
}

// appendPub adds line to the public key file at path (created with the
// header when missing), atomically.
func appendPub(path, line string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		data = []byte(pubHeader + "\n")
	} else if err != nil {
		return err
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	return writeFileSync(path, append(data, line...), 0o644)
}
