package scram

import (
	"context"
	"strings"
	"testing"
)

// FuzzParseClientFirst checks that the client-first parser never panics,
// bounds what it accepts, and is canonical: the accepted fields encode
// back to the message (apart from skipped extensions). Seeds are in
// testdata/fuzz/FuzzParseClientFirst.
func FuzzParseClientFirst(f *testing.F) {
	f.Add([]byte(rfcClientFirst))
	f.Fuzz(func(t *testing.T, msg []byte) {
		cf, err := parseClientFirst(msg)
		if err != nil {
			return
		}
		if len(msg) > MaxMessage || len(cf.user) > MaxUsername || len(cf.nonce) > maxNonce || CheckUsername(cf.user) != nil {
			t.Fatalf("limits not enforced: %q", msg)
		}
		enc := cf.gs2 + "n=" + escapeUsername(cf.user) + ",r=" + cf.nonce
		if !strings.HasPrefix(string(msg), enc) || (len(msg) > len(enc) && msg[len(enc)] != ',') {
			t.Fatalf("%q parsed to %+v, which encodes as %q", msg, cf, enc)
		}
	})
}

// FuzzParseClientFinal checks the client-final parser the same way.
func FuzzParseClientFinal(f *testing.F) {
	f.Add([]byte(rfcClientFinal))
	f.Fuzz(func(t *testing.T, msg []byte) {
		cf, err := parseClientFinal(msg, SHA256)
		if err != nil {
			return
		}
		if len(cf.proof) != SHA256.size() || !strings.HasPrefix(string(msg), cf.withoutProof+",p=") {
			t.Fatalf("%q parsed to %+v", msg, cf)
		}
		if !strings.HasPrefix(cf.withoutProof, "c="+b64.EncodeToString([]byte(cf.cbind))+",r="+cf.nonce) {
			t.Fatalf("%q is not canonical", msg)
		}
	})
}

// FuzzServerConversation drives a server conversation with two arbitrary
// messages: it must never panic, never succeed without the password, and
// never answer more than it should.
func FuzzServerConversation(f *testing.F) {
	f.Add([]byte(rfcClientFirst), []byte(rfcClientFinal))
	f.Add([]byte("y,,n=user,r=x,e=1"), []byte("c=eSws,r=x,p=AAAA"))
	cred := Credential{Mechanism: SHA256, Iterations: 4096, Salt: make([]byte, 16), StoredKey: make([]byte, 32), ServerKey: make([]byte, 32)}
	f.Fuzz(func(t *testing.T, first, final []byte) {
		srv, err := NewServer(ServerConfig{Lookup: mapLookup{{"user", SHA256}: cred}, Rand: strings.NewReader(strings.Repeat("n", 64))})
		if err != nil {
			t.Fatal(err)
		}
		conv, _ := srv.Begin("SCRAM-SHA-256")
		out, done, _, err := conv.Step(context.Background(), first)
		if err != nil {
			if out != nil || done {
				t.Fatal("output on failure")
			}
			return
		}
		if done || len(out) > MaxMessage {
			t.Fatalf("first step: done %v, %d bytes", done, len(out))
		}
		out, done, _, err = conv.Step(context.Background(), final)
		if err == nil || done || out != nil {
			// All-zero keys: no proof can verify (H(x) = 0 has no
			// known preimage).
			t.Fatalf("authenticated by %q %q", first, final)
		}
	})
}

// FuzzClient checks that the client side refuses malformed or hostile
// server messages without panicking.
func FuzzClient(f *testing.F) {
	f.Add([]byte(rfcServerFirst), []byte("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
	f.Fuzz(func(t *testing.T, first, final []byte) {
		cl, err := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{Rand: strings.NewReader(rfcClientNonce), MaxIterations: 4096})
		if err != nil {
			t.Fatal(err)
		}
		cl.nonceLen = len(rfcClientNonce)
		cl.First()
		if _, err := cl.Final(first); err != nil {
			return
		}
		cl.Verify(final)
	})
}

// FuzzParseFile checks that the credentials-file parser never panics,
// reports at most maxErrors problems, and that an accepted file written
// back parses to the same credentials.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("# c\nuser:SCRAM-SHA-256:4096:W22ZaJ0SNY7soEsUEjb6gQ==:WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, lines, err := parseFile("fuzz", data, MinIterations)
		if err != nil {
			if strings.Count(err.Error(), "\n") > maxErrors {
				t.Fatal("too many problems reported")
			}
			return
		}
		var b strings.Builder
		for _, l := range lines {
			if l.key.user != "" {
				if got := tab[l.key].line(l.key.user); got != l.text {
					t.Fatalf("line %q encodes back as %q", l.text, got)
				}
			}
			b.WriteString(l.text + "\n")
		}
		tab2, _, err := parseFile("fuzz", []byte(b.String()), MinIterations)
		if err != nil || len(tab2) != len(tab) {
			t.Fatalf("written back: %v", err)
		}
	})
}
