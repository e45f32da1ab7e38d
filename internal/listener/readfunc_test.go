package listener

import (
	"bytes"
	"io"
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestSetReadFunc: bytes that came with the PROXY header are returned
// first, then Read goes through the function set with SetReadFunc instead
// of the TCP connection's own Read.
func TestSetReadFunc(t *testing.T) {
	testutil.CheckNoLeaks(t)
	l := listen(t, Config{Proxy: &ProxyConfig{Trusted: loopbackOnly}})
	ch := acceptAsync(l)
	client := dialFrom(t, l, "127.0.0.1")
	// The header and the first bytes in one write, so that the listener
	// reads past the header.
	if _, err := client.Write(append(proxyHeader(t, 2), "early"...)); err != nil {
		t.Fatal(err)
	}
	srv := waitAccept(t, ch)
	defer srv.Close()
	lc := srv.(*Conn)
	calls := 0
	lc.SetReadFunc(func(p []byte) (int, error) {
		calls++
		return lc.Conn.Read(p)
	})
	if _, err := client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("earlylate"))
	if _, err := io.ReadFull(srv, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte("earlylate")) {
		t.Fatalf("read %q", got)
	}
	if calls == 0 {
		t.Fatal("the read function was not used")
	}
}
