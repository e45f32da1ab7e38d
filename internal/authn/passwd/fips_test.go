package passwd

import (
	"crypto/fips140"
	"testing"
)

// TestFIPSWritesPBKDF2 checks that in FIPS 140-3 mode (GODEBUG=fips140=on,
// make fips-test) new password hashes are PBKDF2-SHA512 and not argon2id,
// which is not an approved algorithm.
func TestFIPSWritesPBKDF2(t *testing.T) {
	h, err := newHash([]byte("a long enough password"))
	if err != nil {
		t.Fatal(err)
	}
	want := Argon2id
	if fips140.Enabled() {
		want = PBKDF2
	}
	if h.scheme != want {
		t.Fatalf("new hash is %s in fips140=%v mode, want %s", h.scheme, fips140.Enabled(), want)
	}
	if !h.verify([]byte("a long enough password")) || h.verify([]byte("another password")) {
		t.Fatal("the new hash does not verify its password only")
	}
}
