package broker

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection: the client's
// and the accepted one.
func tcpPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.AcceptTCP()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// stamped returns a stampedReader for the server end of a fresh pair, with
// both ends, or skips the test where the kernel gives no stamps.
func stamped(t testing.TB) (client, server *net.TCPConn, r *stampedReader) {
	t.Helper()
	if !kernelArrivals {
		t.Skip("no kernel receive timestamps on this system")
	}
	client, server = tcpPair(t)
	r = newStampedReader(server, server.LocalAddr(), server.RemoteAddr())
	if r == nil {
		t.Fatal("receive timestamps refused")
	}
	return client, server, r
}

// waitKernelStamps waits until the kernel stamps received packets: it
// switches stamping on some time after the first socket asks (see
// stampHold), and a test that compares arrival times must not start
// before. Call it while a Server (whose stampHold keeps stamping on)
// exists.
func waitKernelStamps(t testing.TB) {
	t.Helper()
	if !kernelArrivals {
		return
	}
	client, _, r := stamped(t)
	buf := make([]byte, 16)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(buf); err != nil {
			t.Fatal(err)
		}
		if r.kernel {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the kernel did not stamp received packets within 10s")
}

// TestArrivalTimesOrderSockets: bytes written to one socket and then to
// another carry arrival times in that order, whichever is read first, and
// the times are the system's real-time clock.
func TestArrivalTimesOrderSockets(t *testing.T) {
	testServer(t, Config{}) // keeps the kernel stamping
	waitKernelStamps(t)
	c1, _, r1 := stamped(t)
	c2, _, r2 := stamped(t)
	before := time.Now().UnixNano()
	for range 20 {
		c1.Write([]byte("first"))
		c2.Write([]byte("second"))
		buf := make([]byte, 64)
		// Read the later one first, as a scheduler might.
		if n, err := r2.Read(buf); err != nil || string(buf[:n]) != "second" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		if n, err := r1.Read(buf); err != nil || string(buf[:n]) != "first" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		if !r1.kernel || !r2.kernel {
			t.Fatal("no kernel stamp")
		}
		if r1.at >= r2.at {
			t.Fatalf("arrival times %d, %d: not in the order written", r1.at, r2.at)
		}
	}
	after := time.Now().UnixNano()
	if r1.at < before || r2.at > after {
		t.Fatalf("arrival times %d, %d outside [%d, %d]", r1.at, r2.at, before, after)
	}
}

// TestStampedReaderErrors: the reader reports deadlines, the end of the
// stream and a closed socket as the socket's own Read does.
func TestStampedReaderErrors(t *testing.T) {
	client, conn, r := stamped(t)
	buf := make([]byte, 8)

	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := r.Read(buf); !isTimeout(err) {
		t.Fatalf("past the deadline: %v, want a timeout", err)
	}
	conn.SetReadDeadline(time.Time{})
	client.Write([]byte("ab"))
	if n, err := r.Read(buf); n != 2 || err != nil || r.at == 0 {
		t.Fatalf("read %d, %v (at %d)", n, err, r.at)
	}
	client.Close()
	if _, err := r.Read(buf); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
	conn.Close()
	if _, err := r.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("after Close: %v, want net.ErrClosed", err)
	}
}
