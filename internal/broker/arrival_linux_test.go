//go:build linux && (amd64 || arm64 || loong64 || mips64 || mips64le || ppc64 || ppc64le || riscv64 || s390x)

package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// cmsg builds one control message as the kernel lays it out on 64-bit
// Linux, padded to 8 bytes.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, cmsgHeader, cmsgHeader+len(data)+8)
	binary.NativeEndian.PutUint64(b, uint64(cmsgHeader+len(data)))
	binary.NativeEndian.PutUint32(b[8:], uint32(level))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	b = append(b, data...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

func timespec(sec, nsec int64) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint64(b, uint64(sec))
	binary.NativeEndian.PutUint64(b[8:], uint64(nsec))
	return b
}

func TestStampOf(t *testing.T) {
	if syscall.SizeofCmsghdr != cmsgHeader {
		t.Fatalf("struct cmsghdr is %d bytes here, stampOf assumes %d", syscall.SizeofCmsghdr, cmsgHeader)
	}
	stamp := cmsg(syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, timespec(1700000000, 123))
	other := cmsg(syscall.SOL_SOCKET, syscall.SO_TIMESTAMP, timespec(1, 2))
	odd := cmsg(syscall.IPPROTO_IP, 1, []byte{1, 2, 3})
	for _, tc := range []struct {
		name string
		oob  []byte
		want int64
	}{
		{"none", nil, 0},
		{"stamp", stamp, 1700000000_000000123},
		{"after another message", append(append([]byte{}, odd...), stamp...), 1700000000_000000123},
		{"only other messages", append(append([]byte{}, other...), odd...), 0},
		{"truncated header", stamp[:10], 0},
		{"truncated data", stamp[:cmsgHeader+8], 0},
		{"length past the buffer", func() []byte {
			b := append([]byte{}, stamp...)
			binary.NativeEndian.PutUint64(b, 1000)
			return b
		}(), 0},
		{"length below the header", func() []byte {
			b := append([]byte{}, stamp...)
			binary.NativeEndian.PutUint64(b, 3)
			return b
		}(), 0},
	} {
		if got := stampOf(tc.oob); got != tc.want {
			t.Errorf("%s: stampOf = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzStampOf: any control buffer is parsed without reading out of
// bounds or looping forever.
func FuzzStampOf(f *testing.F) {
	f.Add(cmsg(syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, timespec(1, 2)))
	f.Add(append(cmsg(syscall.IPPROTO_IP, 1, []byte{1}), cmsg(syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, timespec(3, 4))...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		stampOf(oob)
	})
}

// TestStampedReaderReadNow: readNow returns what has arrived without
// waiting: nothing (and no error) on a quiet socket, the bytes once they
// are there, and the end once the peer closed.
func TestStampedReaderReadNow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := newStampedReader(nc.(*net.TCPConn), nc.LocalAddr(), nc.RemoteAddr())
	if r == nil {
		t.Skip("no kernel receive timestamps here")
	}
	buf := make([]byte, 16)
	if n, err := r.readNow(buf); n != 0 || err != nil {
		t.Fatalf("quiet socket: %d bytes, %v", n, err)
	}
	peer.Write([]byte("abc"))
	var got []byte
	testutil.CheckFor(t, 5*time.Second, func() error {
		n, err := r.readNow(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		if string(got) != "abc" {
			return fmt.Errorf("read %q", got)
		}
		return nil
	})
	peer.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		n, err := r.readNow(buf)
		if n != 0 || err != io.EOF {
			return fmt.Errorf("after close: %d bytes, %v", n, err)
		}
		return nil
	})
}

// TestTopUp: when the read buffer ends in part of a packet, topUp adds
// what has arrived without waiting: nothing (and no error) while the rest
// has not come, the rest once it is there, nothing while the client is
// held back, and an end of the connection is kept for the next read.
func TestTopUp(t *testing.T) {
	client, server := tcpPair(t)
	c := &conn{}
	c.src.c = c
	c.src.sr = newStampedReader(server, server.LocalAddr(), server.RemoteAddr())
	if c.src.sr == nil {
		t.Skip("no kernel receive timestamps here")
	}
	c.in = inputPool.Get().(*input)
	c.in.c = c
	c.in.br.Reset(&c.src)
	c.in.r.SetVersion(packet.V311)
	defer c.releaseInput()
	var two []byte
	for i := range 2 {
		var err error
		two, err = packet.Append(two, &packet.Publish{Topic: "t", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("payload")}, packet.V311)
		if err != nil {
			t.Fatal(err)
		}
	}
	half := len(two) / 2 // the first packet and part of the second
	client.Write(two[:len(two)-3])
	testutil.CheckFor(t, 5*time.Second, func() error {
		if _, err := c.in.br.Peek(half + 1); err != nil {
			t.Fatal(err)
		}
		if n := c.in.br.Buffered(); n != len(two)-3 {
			return fmt.Errorf("%d bytes buffered", n)
		}
		return nil
	})
	if _, err := c.in.r.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	if c.topUp() {
		t.Fatal("topUp completed a packet whose end was not sent")
	}
	client.Write(two[len(two)-3:])
	// Held back: the rest waits for the client's turn.
	c.pub.holds = append(c.pub.holds, hold{})
	if c.topUp() {
		t.Fatal("topUp read for a held client")
	}
	c.pub.holds = c.pub.holds[:0]
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !c.topUp() {
			return fmt.Errorf("rest not taken in (%d bytes buffered)", c.in.br.Buffered())
		}
		return nil
	})
	p, err := c.in.r.ReadPacket()
	if pub, ok := p.(*packet.Publish); err != nil || !ok || pub.PacketID != 2 {
		t.Fatalf("second packet: %v, %v", p, err)
	}
	// Part of a third packet, then the end of the connection.
	client.Write(two[:3])
	client.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		c.topUp()
		if _, err := c.in.r.ReadPacket(); err == nil || !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return fmt.Errorf("after close: %v", err)
		}
		return nil
	})
}
