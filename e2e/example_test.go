package e2e_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/moatmq/moat/e2e"
)

// A sensor seals a reading for its topic; the platform opens it. In a real
// deployment both keyrings are filled from key bundles (see
// e2e.OpenBundle); here they share one epoch key.
func Example() {
	secret := make([]byte, e2e.KeySize)
	rand.Read(secret)
	epoch, err := e2e.NewEpochKey("temps", "factory/+/temp", 1, secret, []string{"sensor-042"}, time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	ring := &e2e.Keyring{}
	ring.AddEpochKey(epoch)

	sealer, err := e2e.NewGroupSealer(e2e.SealerConfig{
		Sender:   "sensor-042",
		Keys:     ring,
		Sequence: &e2e.MemorySequenceStore{}, // use OpenFileSequenceStore in production
	})
	if err != nil {
		log.Fatal(err)
	}
	msg, err := sealer.Seal("factory/line1/temp", []byte(`{"temp":21.5}`))
	if err != nil {
		log.Fatal(err)
	}

	opener, err := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: ring})
	if err != nil {
		log.Fatal(err)
	}
	m, err := opener.Open("factory/line1/temp", msg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s from %s (group %s, epoch %d)\n", m.Plaintext, m.Sender, m.Group, m.Epoch)

	// The same bytes replayed onto another topic, or a second time, fail.
	_, err = opener.Open("factory/line2/temp", msg)
	fmt.Println(errors.Is(err, e2e.ErrWrongTopic))
	_, err = opener.Open("factory/line1/temp", msg)
	fmt.Println(errors.Is(err, e2e.ErrReplay))
	// Output:
	// {"temp":21.5} from sensor-042 (group temps, epoch 1)
	// true
	// true
}

// The seed's raw format: nonce(12) ‖ ciphertext ‖ tag(16) with a pre-shared
// AES-256 key, as its Python snippet writes it.
func ExampleRawKey() {
	key, err := e2e.ParseRawKey([]byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"))
	if err != nil {
		log.Fatal(err)
	}
	msg, _ := key.Seal("", []byte("21.5"))
	fmt.Println(len(msg) == 4+e2e.RawOverhead)
	m, err := key.Open("", msg)
	fmt.Println(string(m.Plaintext), err)
	// Output:
	// true
	// 21.5 <nil>
}

// A member generates an HPKE key (ML-KEM-768 + X25519 by default), registers
// the public half with the key service, and opens the bundles it receives.
func ExampleGenerateMemberKey() {
	mk, err := e2e.GenerateMemberKey(0)
	if err != nil {
		log.Fatal(err)
	}
	pub := mk.Public()
	fmt.Println(pub.KEM, len(pub.Key))
	// Output: mlkem768x25519 1216
}
