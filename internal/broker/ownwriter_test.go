package broker

import (
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// ackedPublishes encodes n QoS 1 PUBLISH packets with identifiers from first
// on, for one write.
func ackedPublishes(t *testing.T, first, n int) []byte {
	t.Helper()
	var b []byte
	for i := range n {
		var err error
		b, err = packet.Append(b, &packet.Publish{Topic: "o", QoS: 1, PacketID: uint16(first + i), Payload: []byte("m")}, packet.V311)
		if err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// expectPubacks reads PUBACKs for the identifiers first..first+n-1, in
// order.
func (c *rawClient) expectPubacks(first, n int) {
	c.t.Helper()
	for i := range n {
		p := c.recv()
		ack, ok := p.(*packet.Puback)
		if !ok || int(ack.PacketID) != first+i {
			c.t.Fatalf("got %v, want PUBACK %d", p, first+i)
		}
	}
}

// TestOwnWriterHeldForBufferedPackets: the acknowledgements of packets
// that arrived together wait while the reader handles the rest of them
// (holdOwnWriter), and all go out, in order, past the hold's bound of
// maxOwnHeld packets.
func TestOwnWriterHeldForBufferedPackets(t *testing.T) {
	_, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "burst", CleanStart: true, KeepAlive: 60})
	const n = maxOwnHeld + 16
	b := ackedPublishes(t, 1, n)
	if len(b) > readBufSize {
		t.Fatalf("%d bytes of packets do not fit one read (%d)", len(b), readBufSize)
	}
	c.write(b)
	c.expectPubacks(1, n)
}

// TestOwnWriterStartedBeforePause: a reader that pauses (the Observer's
// rate limit) after packets whose acknowledgements it held back starts
// its writer first: the acknowledgements arrive during the pause, not
// after it.
func TestOwnWriterStartedBeforePause(t *testing.T) {
	clk := newFakeClock()
	obs := &limitObserver{pauseAt: 3, paused: make(chan struct{})}
	_, addr := testServer(t, Config{Observer: obs, Clock: clk})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "paused", CleanStart: true, KeepAlive: 60})
	pending := clk.pending()
	c.write(ackedPublishes(t, 1, 4)) // the third pauses the reader
	<-obs.paused
	testutil.WaitFor(t, "the pause's timer", 5*time.Second, func() bool { return clk.pending() > pending })
	c.expectPubacks(1, 3) // the pause lasts until the clock moves
	clk.advance(time.Minute)
	c.expectPubacks(4, 1)
}
