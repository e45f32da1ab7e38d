package brokertest

import (
	"net"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }

// TestStartStop: the started broker answers a CONNECT on Addr, and after
// Stop (which the cleanup calls again) it refuses connections.
func TestStartStop(t *testing.T) {
	b := Start(t, broker.Config{AllowAnonymous: true, SysInterval: -1}, Options{Listener: broker.ListenerConfig{Name: "t"}})
	nc, err := net.DialTimeout("tcp", b.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// MQTT 5 CONNECT, clean start, client "bt".
	nc.Write([]byte{0x10, 0x0f, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 2, 'b', 't'})
	buf := make([]byte, 4)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(buf); err != nil || n < 4 || buf[0] != 0x20 || buf[3] != 0 {
		t.Fatalf("no successful CONNACK: %v % x", err, buf[:n])
	}
	if got := b.Server.Stats().ClientsConnected; got != 1 {
		t.Fatalf("ClientsConnected = %d, want 1", got)
	}
	b.Stop()
	if c, err := net.DialTimeout("tcp", b.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the stopped broker still accepts connections")
	}
}
