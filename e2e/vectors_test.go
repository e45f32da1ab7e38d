package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e/internal/format"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

// groupVector is one test vector of the group format; every byte string is
// hex. docs/e2e-format.md explains each step.
type groupVector struct {
	Description string `json:"description"`
	Group       string `json:"group"`
	Filter      string `json:"filter"`
	Epoch       uint64 `json:"epoch"`
	EpochSecret string `json:"epoch_secret"`
	Sender      string `json:"sender"`
	Seq         uint64 `json:"seq"`
	TimeMillis  int64  `json:"time_ms"`
	Topic       string `json:"topic"`
	Plaintext   string `json:"plaintext"`
	// Retained: sealed with SealRetained (header label -65540 = 1).
	Retained    bool   `json:"retained,omitempty"`
	HKDFInfo    string `json:"hkdf_info"`
	SenderKey   string `json:"sender_key"`
	SenderIV    string `json:"sender_iv"`
	Nonce       string `json:"nonce"`
	Protected   string `json:"protected"`
	ExternalAAD string `json:"external_aad"`
	EncStruct   string `json:"enc_structure"`
	Message     string `json:"message"`
	// WrongTopic must fail to open with "wrong topic".
	WrongTopic string `json:"wrong_topic"`
}

type rawVector struct {
	Description string `json:"description"`
	Key         string `json:"key"`
	Nonce       string `json:"nonce"`
	Plaintext   string `json:"plaintext"`
	Message     string `json:"message"`
}

// signedVector is a signed-then-encrypted message (Ed25519 is
// deterministic, so the vector is fixed).
type signedVector struct {
	Description  string `json:"description"`
	Ed25519Seed  string `json:"ed25519_seed"`
	PublicKey    string `json:"ed25519_public_key"`
	KID          string `json:"kid"`
	Topic        string `json:"topic"`
	TimeMillis   int64  `json:"time_ms"`
	Payload      string `json:"payload"`
	SigStructure string `json:"sig_structure"`
	Sign1        string `json:"sign1"`
	// The Sign1 sealed as the plaintext of group vector 0's key, with
	// content type 18 and sequence number Seq.
	Seq       uint64 `json:"seq"`
	EncStruct string `json:"enc_structure"`
	Message   string `json:"message"`
}

type vectorFile struct {
	Comment string         `json:"comment"`
	Group   []groupVector  `json:"group"`
	Signed  []signedVector `json:"signed"`
	Raw     []rawVector    `json:"raw"`
}

func seqBytes(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func buildVectors(t *testing.T) vectorFile {
	inputs := []groupVector{
		{Description: "sensor reading, small sequence number", Group: "factory-temps", Filter: "factory/+/temp", Epoch: 3,
			EpochSecret: hex.EncodeToString(seqBytes(32, 0x00)), Sender: "sensor-042", Seq: 1029, TimeMillis: 1767225600000,
			Topic: "factory/line1/temp", Plaintext: hex.EncodeToString([]byte(`{"temp":21.5}`)), WrongTopic: "factory/line2/temp"},
		{Description: "empty payload, sequence 0, URI sender", Group: "g", Filter: "#", Epoch: 1,
			EpochSecret: hex.EncodeToString(seqBytes(32, 0x80)), Sender: "spiffe://plant/dev/7", Seq: 0, TimeMillis: 1700000000000,
			Topic: "a/b", Plaintext: "", WrongTopic: "a/b/"},
		{Description: "large sequence number (8-byte partial IV)", Group: "ota", Filter: "ota/#", Epoch: 4294967296,
			EpochSecret: hex.EncodeToString(seqBytes(32, 0x40)), Sender: "fw", Seq: 1<<64 - 2, TimeMillis: 1767225600123,
			Topic: "ota/sensors/fw", Plaintext: hex.EncodeToString(seqBytes(256, 0)), WrongTopic: "ota/sensors/fw2"},
		{Description: "retained message (marked in the protected header)", Group: "factory-temps", Filter: "factory/+/temp", Epoch: 3,
			EpochSecret: hex.EncodeToString(seqBytes(32, 0x00)), Sender: "sensor-042", Seq: 1031, TimeMillis: 1767225660000,
			Topic: "factory/line1/temp", Plaintext: hex.EncodeToString([]byte(`{"temp":21.7}`)), Retained: true, WrongTopic: "factory/line3/temp"},
	}
	var vf vectorFile
	vf.Comment = "Moat e2e test vectors; see docs/e2e-format.md. All byte strings are hex."
	for _, v := range inputs {
		secret, _ := hex.DecodeString(v.EpochSecret)
		pt, _ := hex.DecodeString(v.Plaintext)
		ek, err := NewEpochKey(v.Group, v.Filter, v.Epoch, secret, []string{v.Sender}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		sk, err := ek.SenderKey(v.Sender)
		if err != nil {
			t.Fatal(err)
		}
		info := format.AppendArray(nil, 4)
		info = format.AppendText(info, senderKeyInfo)
		info = format.AppendText(info, v.Group)
		info = format.AppendUint(info, v.Epoch)
		info = format.AppendBytes(info, []byte(v.Sender))
		v.HKDFInfo = hex.EncodeToString(info)
		v.SenderKey = hex.EncodeToString(sk.material[:KeySize])
		v.SenderIV = hex.EncodeToString(sk.iv[:])
		var nonce [nonceSize]byte
		sk.nonce(&nonce, v.Seq)
		v.Nonce = hex.EncodeToString(nonce[:])
		tc := computeTopicCheck(v.Topic)
		msg := seal(sk, v.Topic, &tc, v.Seq, v.TimeMillis, 0, v.Retained, pt)
		protected, _, err := format.ParseEncrypt0(msg)
		if err != nil {
			t.Fatal(err)
		}
		v.Protected = hex.EncodeToString(protected)
		enc := appendEncAAD(nil, protected, v.Topic, v.Group, v.Epoch, v.Sender)
		v.EncStruct = hex.EncodeToString(enc)
		ext := format.AppendArray(nil, 5)
		ext = format.AppendText(ext, aadContext)
		ext = format.AppendText(ext, v.Topic)
		ext = format.AppendText(ext, v.Group)
		ext = format.AppendUint(ext, v.Epoch)
		ext = format.AppendBytes(ext, []byte(v.Sender))
		v.ExternalAAD = hex.EncodeToString(ext)
		v.Message = hex.EncodeToString(msg)
		vf.Group = append(vf.Group, v)
	}
	{
		g := vf.Group[0]
		seed := seqBytes(32, 0x50)
		priv := ed25519.NewKeyFromSeed(seed)
		pub := priv.Public().(ed25519.PublicKey)
		spki, _ := x509.MarshalPKIXPublicKey(pub)
		sum := sha256.Sum256(spki)
		signer := &Signer{key: priv, alg: format.AlgEdDSA, kid: sum[:16]}
		payload := []byte(`{"temp":21.5,"signed":true}`)
		sign1, err := signer.signMessage(g.Topic, g.TimeMillis, payload)
		if err != nil {
			t.Fatal(err)
		}
		protected, _, _, _ := format.ParseSign1(sign1)
		secret, _ := hex.DecodeString(g.EpochSecret)
		ek, _ := NewEpochKey(g.Group, g.Filter, g.Epoch, secret, nil, time.Time{})
		sk, _ := ek.SenderKey(g.Sender)
		msg := sealWith(sk, g.Topic, g.Seq+1, g.TimeMillis, format.ContentTypeSign1, sign1)
		vf.Signed = append(vf.Signed, signedVector{
			Description: "Ed25519 COSE_Sign1 inside the group format (content type 18)",
			Ed25519Seed: hex.EncodeToString(seed), PublicKey: hex.EncodeToString(pub), KID: hex.EncodeToString(sum[:16]),
			Topic: g.Topic, TimeMillis: g.TimeMillis, Payload: hex.EncodeToString(payload),
			SigStructure: hex.EncodeToString(format.AppendSigStructure(nil, protected, sigAAD(g.Topic), payload)),
			Sign1:        hex.EncodeToString(sign1), Seq: g.Seq + 1, Message: hex.EncodeToString(msg),
			EncStruct: hex.EncodeToString(func() []byte {
				p, _, _ := format.ParseEncrypt0(msg)
				return appendEncAAD(nil, p, g.Topic, g.Group, g.Epoch, g.Sender)
			}()),
		})
	}
	key := seqBytes(32, 0x20)
	nonce := seqBytes(12, 0xa0)
	rk, _ := NewRawKey(key)
	rk.Rand = bytes.NewReader(nonce)
	pt := []byte(`{"temp": 21.5}`)
	msg, _ := rk.Seal("", pt)
	vf.Raw = append(vf.Raw, rawVector{Description: "seed format: nonce(12) || ciphertext || tag(16), no AAD",
		Key: hex.EncodeToString(key), Nonce: hex.EncodeToString(nonce), Plaintext: hex.EncodeToString(pt), Message: hex.EncodeToString(msg)})
	return vf
}

func TestVectors(t *testing.T) {
	path := filepath.Join("testdata", "vectors.json")
	got := buildVectors(t)
	if *update {
		b, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want vectorFile
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		t.Fatal("generated vectors differ from testdata/vectors.json (run with -update if the change is intended)")
	}
	// Open every stored vector independently of how it was produced.
	for _, v := range want.Group {
		t.Run(v.Description, func(t *testing.T) {
			secret, _ := hex.DecodeString(v.EpochSecret)
			msg, _ := hex.DecodeString(v.Message)
			pt, _ := hex.DecodeString(v.Plaintext)
			ring := &Keyring{}
			ek, _ := NewEpochKey(v.Group, v.Filter, v.Epoch, secret, nil, time.Time{})
			ring.AddEpochKey(ek)
			o, _ := NewGroupOpener(OpenerConfig{Keys: ring, Now: func() time.Time { return time.UnixMilli(v.TimeMillis) }})
			m, err := o.Open(v.Topic, msg)
			if err != nil || !bytes.Equal(m.Plaintext, pt) || m.Seq != v.Seq || m.Retained != v.Retained {
				t.Fatalf("open: %v", err)
			}
			if _, err := o.Open(v.WrongTopic, msg); !errors.Is(err, ErrWrongTopic) {
				t.Fatalf("wrong topic: %v", err)
			}
			tc := sha256.Sum256([]byte(v.Topic))
			if !bytes.Contains(msg, tc[:8]) {
				t.Fatal("topic check missing")
			}
		})
	}
	for _, v := range want.Signed {
		g := want.Group[0]
		seed, _ := hex.DecodeString(v.Ed25519Seed)
		priv := ed25519.NewKeyFromSeed(seed)
		cert := selfSigned(t, g.Sender, priv)
		trust, _ := NewTrustStore(cert)
		secret, _ := hex.DecodeString(g.EpochSecret)
		ring := &Keyring{}
		ek, _ := NewEpochKey(g.Group, g.Filter, g.Epoch, secret, nil, time.Time{})
		ring.AddEpochKey(ek)
		at := time.UnixMilli(v.TimeMillis)
		o, _ := NewGroupOpener(OpenerConfig{Keys: ring, Now: func() time.Time { return at }, Trust: trust, RequireSignature: true})
		msg, _ := hex.DecodeString(v.Message)
		payload, _ := hex.DecodeString(v.Payload)
		m, err := o.Open(v.Topic, msg)
		if err != nil || !bytes.Equal(m.Plaintext, payload) || m.Signer == nil {
			t.Fatalf("signed vector: %v", err)
		}
	}
	for _, v := range want.Raw {
		key, _ := hex.DecodeString(v.Key)
		msg, _ := hex.DecodeString(v.Message)
		pt, _ := hex.DecodeString(v.Plaintext)
		rk, _ := NewRawKey(key)
		m, err := rk.Open("", msg)
		if err != nil || !bytes.Equal(m.Plaintext, pt) {
			t.Fatalf("raw vector: %v", err)
		}
	}
}

// pyCheckVectors recomputes the group vectors with Python's cryptography
// package (HKDF-SHA256 and AES-GCM), an implementation independent of Go's.
const pyCheckVectors = `
import json, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
vf = json.load(open(sys.argv[1]))
h = bytes.fromhex
for v in vf["group"]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=h(v["hkdf_info"])).derive(h(v["epoch_secret"]))
    assert okm[:32] == h(v["sender_key"]), "sender key"
    assert okm[32:] == h(v["sender_iv"]), "sender iv"
    nonce = bytes(a ^ b for a, b in zip(okm[32:], (v["seq"]).to_bytes(12, "big")))
    assert nonce == h(v["nonce"]), "nonce"
    ct = AESGCM(okm[:32]).encrypt(nonce, h(v["plaintext"]), h(v["enc_structure"]))
    assert h(v["message"]).endswith(ct), "ciphertext"
    assert h(v["protected"]) in h(v["message"]), "protected header"
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
g = vf["group"][0]
for v in vf["signed"]:
    priv = Ed25519PrivateKey.from_private_bytes(h(v["ed25519_seed"]))
    pub = priv.public_key()
    sig = h(v["sign1"])[-64:]
    Ed25519PublicKey.from_public_bytes(h(v["ed25519_public_key"])).verify(sig, h(v["sig_structure"]))
    assert priv.sign(h(v["sig_structure"])) == sig, "deterministic signature"
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=h(g["hkdf_info"])).derive(h(g["epoch_secret"]))
    nonce = bytes(a ^ b for a, b in zip(okm[32:], (v["seq"]).to_bytes(12, "big")))
    ct = AESGCM(okm[:32]).encrypt(nonce, h(v["sign1"]), h(v["enc_structure"]))
    assert h(v["message"]).endswith(ct), "signed message ciphertext"
for v in vf["raw"]:
    m = h(v["message"])
    assert AESGCM(h(v["key"])).decrypt(m[:12], m[12:], None) == h(v["plaintext"])
print("ok", len(vf["group"]), len(vf["raw"]))
`

func TestVectorsPython(t *testing.T) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("Debian python3 not installed")
	}
	if err := exec.Command(py, "-c", "import cryptography.hazmat.primitives.kdf.hkdf").Run(); err != nil {
		t.Skip("python3-cryptography not installed")
	}
	out, err := exec.Command(py, "-c", pyCheckVectors, filepath.Join("testdata", "vectors.json")).CombinedOutput()
	if err != nil {
		t.Fatalf("python check: %v\n%s", err, out)
	}
}
