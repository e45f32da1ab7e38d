package guard

import (
	"net/netip"
	"testing"
)

// BenchmarkAllowAccept measures the accept-time check: the allowed path
// (rate high enough that nothing is refused) and the refused path (one
// address past its burst), over 256 addresses.
func BenchmarkAllowAccept(b *testing.B) {
	addrs := make([]netip.Addr, 256)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{127, 0, 1, byte(i)})
	}
	b.Run("allowed", func(b *testing.B) {
		g, _ := newGuard(b, Config{ConnRate: 1e9, ConnBurst: 1 << 30}, nil, nil)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			g.AllowAccept(addrs[i&255])
			i++
		}
	})
	b.Run("refused", func(b *testing.B) {
		g, _ := newGuard(b, Config{ConnRate: 1e-3, ConnBurst: 1}, nil, nil)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			g.AllowAccept(addrs[i&255])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		g, _ := newGuard(b, Config{ConnRate: 1e9, ConnBurst: 1 << 30}, nil, nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				g.AllowAccept(addrs[i&255])
				i++
			}
		})
	})
}

// BenchmarkBannedAddr looks an address up in a list of 10,000 address bans
// of several prefix lengths.
func BenchmarkBannedAddr(b *testing.B) {
	g, _ := newGuard(b, Config{}, nil, nil)
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0})
		bits := 24 + i%9
		if _, err := g.AddBan(Ban{Kind: KindIP, Value: netip.PrefixFrom(a, bits).Masked().String()}); err != nil {
			b.Fatal(err)
		}
	}
	probe := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		g.BannedAddr(probe)
	}
}

// BenchmarkReserve is the per-message rate check on a client's read path.
func BenchmarkReserve(b *testing.B) {
	g, _ := newGuard(b, Config{MessageRate: 1e9, MessageBurst: 1 << 30, ByteRate: 1e9, ByteBurst: 1 << 30}, nil, nil)
	l := g.NewClientLimiter()
	b.ReportAllocs()
	for b.Loop() {
		l.Reserve(256)
	}
}

// BenchmarkUndeliverable is the detector on the publish path (no
// subscriber), below its threshold.
func BenchmarkUndeliverable(b *testing.B) {
	g, _ := newGuard(b, Config{Undeliverable: Detector{Threshold: 10000}}, nil, nil)
	id := Identity{Addr: netip.MustParseAddr("127.0.0.2"), ClientID: "sensor-1", Username: "sensor-1"}
	b.ReportAllocs()
	for b.Loop() {
		g.Undeliverable(id, "telemetry/x")
	}
}

// BenchmarkReservePerRead is Reserve as the broker's reader calls it
// under a fan-in: five packets per read of the socket, so the clock is
// read once per five charges (NewRead). ns/op is per packet; a CPU
// profile splits it between the clock and the charge itself.
func BenchmarkReservePerRead(b *testing.B) {
	g, _ := newGuard(b, Config{MessageRate: 1e9, MessageBurst: 1 << 30, ByteRate: 1e9, ByteBurst: 1 << 30}, nil, nil)
	l := g.NewClientLimiter()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%5 == 0 {
			l.NewRead()
		}
		i++
		l.Reserve(256)
	}
}
