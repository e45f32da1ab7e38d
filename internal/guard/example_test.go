package guard_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/moatmq/moat/internal/guard"
)

// A broker's accept loop checks each new connection before any TLS work.
func ExampleGuard_AllowAccept() {
	frozen := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // no refill while the example runs
	g, err := guard.New(guard.Config{Now: func() time.Time { return frozen }, Tick: make(chan time.Time)})
	if err != nil {
		panic(err)
	}
	defer g.Close()
	lst := g.Listener("mqtts")
	addr := netip.MustParseAddr("192.0.2.10")
	served := 0
	for range 150 { // a burst of connection attempts from one address
		if d := lst.AllowAccept(addr); !d.Allow {
			continue // close the socket; d.Reason goes to the log
		}
		if _, banned := g.BannedAddr(addr); banned {
			continue
		}
		served++
	}
	fmt.Println(served, "of 150 served")
	// Output: 100 of 150 served
}
