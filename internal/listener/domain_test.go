package listener

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestSocketDomain checks Network (Mosquitto socket_domain): tcp4 binds
// IPv4 only and tcp6 IPv6 only, on the loopback addresses and on every
// interface.
func TestSocketDomain(t *testing.T) {
	reachable := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	// reachesOwn tells whether a connection to addr is accepted by l.
	// Another program's listener may hold the same port number on the
	// other IP version (the tests of other packages run beside these),
	// so a connection that succeeds proves nothing until l accepts it.
	// The connections made before are in l's queue too: the one
	// accepted must come from this connection's port. l is closed on
	// the way out.
	reachesOwn := func(t *testing.T, l *Listener, addr string) bool {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		from := c.LocalAddr().(*net.TCPAddr).Port
		found := make(chan bool, 1)
		go func() {
			for {
				a, err := l.Accept()
				if err != nil {
					found <- false
					return
				}
				ok := a.RemoteAddr().(*net.TCPAddr).Port == from
				a.Close()
				if ok {
					found <- true
					return
				}
			}
		}()
		select {
		case ok := <-found:
			l.Close()
			return ok
		case <-time.After(2 * time.Second):
			t.Logf("%s reached another program's listener", addr)
			l.Close()
			return <-found
		}
	}
	port := func(l *Listener) string {
		_, p, _ := net.SplitHostPort(l.Addr().String())
		return p
	}
	probe, err := net.Listen("tcp6", "[::1]:0")
	hasV6 := err == nil
	if hasV6 {
		probe.Close()
	}

	t.Run("ipv4 on 127.0.0.1", func(t *testing.T) {
		l := listen(t, Config{Address: "127.0.0.1:0", Network: "tcp4"})
		if !reachable("127.0.0.1:" + port(l)) {
			t.Fatal("not reachable over IPv4")
		}
	})
	t.Run("ipv4 on every interface", func(t *testing.T) {
		l := listen(t, Config{Address: ":0", Network: "tcp4"})
		if !reachable("127.0.0.1:" + port(l)) {
			t.Fatal("not reachable over IPv4")
		}
		if hasV6 && reachesOwn(t, l, "[::1]:"+port(l)) {
			t.Fatal("socket_domain ipv4 listener reachable over IPv6")
		}
	})
	t.Run("ipv4 refuses an IPv6 address", func(t *testing.T) {
		l, err := Listen(context.Background(), Config{Address: "[::1]:0", Network: "tcp4", Logger: testLogger(t)})
		if err == nil {
			l.Close()
			t.Fatal("tcp4 listener bound to ::1")
		}
		if !strings.Contains(err.Error(), "network tcp4") {
			t.Errorf("error %q does not name the network", err)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		if !hasV6 {
			t.Skip("this machine has no IPv6 loopback (::1 cannot be bound), so the IPv6 half cannot run here")
		}
		l := listen(t, Config{Address: "[::1]:0", Network: "tcp6"})
		if !reachable("[::1]:" + port(l)) {
			t.Fatal("not reachable over IPv6")
		}
		all := listen(t, Config{Address: ":0", Network: "tcp6"})
		if !reachable("[::1]:" + port(all)) {
			t.Fatal("not reachable over IPv6")
		}
		if reachesOwn(t, all, "127.0.0.1:"+port(all)) {
			t.Fatal("socket_domain ipv6 listener reachable over IPv4")
		}
		if l, err := Listen(context.Background(), Config{Address: "127.0.0.1:0", Network: "tcp6", Logger: testLogger(t)}); err == nil {
			l.Close()
			t.Fatal("tcp6 listener bound to 127.0.0.1")
		}
	})
	t.Run("unknown network", func(t *testing.T) {
		err := (&Config{Address: "127.0.0.1:0", Network: "udp"}).validate()
		if err == nil || !strings.Contains(err.Error(), "tcp4 (IPv4 only)") {
			t.Fatalf("validate: %v", err)
		}
	})
}
