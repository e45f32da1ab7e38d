package listener

import (
	"bytes"
	"io"
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestSetReader: bytes that came with the PROXY header are returned
// first, then Read goes through the reader set with SetReader instead of
// the TCP connection's own Read.
func TestSetReader(t *testing.T) {
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
	cr := &countingReader{r: lc.Conn}
	lc.SetReader(cr)
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
	if cr.calls == 0 {
		t.Fatal("the reader was not used")
	}
}

// countingReader counts the reads that reach it.
type countingReader struct {
	r     io.Reader
	calls int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.calls++
	return c.r.Read(p)
}
