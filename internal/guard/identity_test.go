package guard

import (
	"net"
	"testing"
)

func TestAddrOf(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 1}, "127.0.0.2"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}, "10.0.0.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, "invalid IP"},
		{nil, "invalid IP"},
	} {
		if got := AddrOf(tc.in).String(); got != tc.want {
			t.Errorf("AddrOf(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
	a := &net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 1}
	if n := testing.AllocsPerRun(100, func() { AddrOf(a) }); n != 0 {
		t.Errorf("AddrOf allocates %v times", n)
	}
}

func TestParseKeys(t *testing.T) {
	k, err := ParseKeys([]string{"address", "client_id"})
	if err != nil || k != KeyAddr|KeyClientID {
		t.Errorf("ParseKeys = %v, %v", k, err)
	}
	if _, err := ParseKeys([]string{"mac"}); err == nil {
		t.Error("unknown kind accepted")
	}
	if a, err := ParseAction("disconnect"); err != nil || a != ActionDisconnect {
		t.Errorf("ParseAction = %v, %v", a, err)
	}
}
