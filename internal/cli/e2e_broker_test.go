package cli

// The broker never sees a plaintext: messages published with moat pub
// --encrypt (key groups) and --raw-key (the seed's format) go through the
// real `moat serve` binary behind a recording TCP proxy, are retained (so
// the broker keeps them in memory), and are read back with moat sub
// --decrypt / --raw-key. Neither the capture of the broker's traffic nor a
// dump of the broker process's memory contains the plaintexts, while a
// control message published without encryption is found in both.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/moatmq/moat/e2e/keyservice"
)

// recordingProxy forwards TCP connections to a backend and records every
// byte in both directions: a capture of the backend's traffic.
type recordingProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	capture bytes.Buffer
	wg      sync.WaitGroup
}

func startRecordingProxy(t *testing.T, backend string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			go p.pipe(b, c)
			go p.pipe(c, b)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *recordingProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.capture.Write(buf[:n])
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *recordingProxy) port() string { return strconv.Itoa(p.ln.Addr().(*net.TCPAddr).Port) }

func (p *recordingProxy) contains(marker []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Contains(p.capture.Bytes(), marker)
}

// processMemoryContains searches the readable memory of process pid for
// each marker, through /proc/PID/maps and /proc/PID/mem (the test is the
// process's parent, which ptrace access rules allow). Mappings larger than
// 1 GiB are skipped: they are the race detector's shadow memory, which
// holds no data, only metadata about it.
func processMemoryContains(t *testing.T, pid int, markers ...[]byte) []bool {
	t.Helper()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Skipf("cannot read the broker's memory map: %v", err)
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Skipf("cannot read the broker's memory: %v", err)
	}
	defer mem.Close()
	found := make([]bool, len(markers))
	longest := 0
	for _, m := range markers {
		longest = max(longest, len(m))
	}
	buf := make([]byte, 1<<20)
	scanned := 0
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' || (len(f) >= 6 && (f[5] == "[vvar]" || f[5] == "[vsyscall]" || f[5] == "[vvar_vclock]")) {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end-start > 1<<30 {
			continue
		}
		var carry []byte
		for off := start; off < end; {
			n := min(uint64(len(buf)), end-off)
			r, err := mem.ReadAt(buf[:n], int64(off))
			if r <= 0 || (err != nil && err != io.EOF && r == 0) {
				break
			}
			window := append(carry, buf[:r]...)
			for i, m := range markers {
				if !found[i] && bytes.Contains(window, m) {
					found[i] = true
				}
			}
			carry = append(carry[:0], window[max(0, len(window)-longest):]...)
			scanned += r
			off += uint64(r)
		}
	}
	if scanned == 0 {
		t.Skip("no memory of the broker could be read")
	}
	t.Logf("scanned %d MiB of the broker's memory", scanned>>20)
	return found
}

func TestE2EBrokerSeesNoPlaintext(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	broker := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", ports[0]))
		return []string{"-c", "mosquitto.conf"}
	})
	proxy := startRecordingProxy(t, broker.addr(0))
	conn := []string{"-h", "127.0.0.1", "-p", proxy.port()}

	dirs := e2eMemberDirs(t, dir, "temps", "factory/+/temp",
		e2eMember{"sensor-1", keyservice.Writer}, e2eMember{"platform", keyservice.Reader})
	rawKey := filepath.Join(dir, "raw.key")
	e2eRawKeyFile(t, rawKey)

	marker := func(kind string) []byte {
		b := make([]byte, 12)
		rand.Read(b)
		return []byte("MOAT-" + kind + "-" + hex.EncodeToString(b))
	}
	groupSecret, rawSecret, control := marker("GROUP-SECRET"), marker("RAW-SECRET"), marker("CONTROL-PLAIN")

	ctx := psTestCtx(t)
	// Retained, so that the broker keeps each message in memory.
	for _, args := range [][]string{
		{"--encrypt", "--keys", dirs["sensor-1"], "-t", "factory/line1/temp", "-m", string(groupSecret)},
		{"--raw-key", rawKey, "-t", "seed/dev1/temp", "-m", string(rawSecret)},
		{"-t", "plain/dev1/temp", "-m", string(control)},
	} {
		if r := psRun(ctx, "", append(append([]string{"pub"}, conn...), append(args, "-r", "-q", "1")...)...); r.code != 0 {
			t.Fatalf("pub %v: %d %s", args, r.code, r.err)
		}
	}
	// The subscribers print the plaintexts.
	for _, tc := range []struct {
		args []string
		want []byte
	}{
		{[]string{"--decrypt", "--keys", dirs["platform"], "-t", "factory/+/temp"}, groupSecret},
		{[]string{"--raw-key", rawKey, "-t", "seed/+/temp"}, rawSecret},
		{[]string{"-t", "plain/+/temp"}, control},
	} {
		r := psRun(ctx, "", append(append([]string{"sub"}, conn...), append(tc.args, "-C", "1", "-W", "10")...)...)
		if r.code != 0 || r.out != string(tc.want)+"\n" {
			t.Fatalf("sub %v: %d %q %s", tc.args, r.code, r.out, r.err)
		}
	}

	// (b) The capture of the broker's traffic.
	if !proxy.contains(control) {
		t.Fatal("control: the unencrypted message is not in the capture; the capture does not work")
	}
	for _, s := range [][]byte{groupSecret, rawSecret} {
		if proxy.contains(s) {
			t.Errorf("plaintext %s is in the capture of the broker's traffic", s)
		}
	}
	// (c) The broker's memory, while it holds the retained messages.
	found := processMemoryContains(t, broker.cmd.Process.Pid, control, groupSecret, rawSecret)
	if !found[0] {
		t.Fatal("control: the unencrypted retained message is not in the broker's memory; the memory scan does not work")
	}
	if found[1] || found[2] {
		t.Errorf("plaintext in the broker's memory: group %v, raw %v", found[1], found[2])
	}
}
