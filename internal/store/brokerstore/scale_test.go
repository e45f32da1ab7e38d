package brokerstore_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
)

// BenchmarkRecoveryScale fills a store through the store's API with
// MOAT_RECOVERY_SCALE="SESSIONS,RETAINED" (e.g. "100000,1000000"), then
// measures, in a fresh process, what a broker restart on it costs:
// store.Open (verify and decrypt every record), broker.New (rebuild the
// sessions, subscriptions, queues, retained index and publishers), and
// the process's RSS afterwards. Each session has one subscription and one
// queued QoS 1 message (64-byte payload); the retained messages (64-byte
// payloads) come from one publisher per ten topics, each with its own
// client certificate, as devices publishing their own state would. Skipped
// without the variable: it takes minutes and gigabytes at the size.
//
// MOAT_RECOVERY_DIR keeps the filled store there and reuses it when it
// exists (the fill is the slow part).
func BenchmarkRecoveryScale(b *testing.B) {
	spec := os.Getenv("MOAT_RECOVERY_SCALE")
	if spec == "" {
		b.Skip("set MOAT_RECOVERY_SCALE=SESSIONS,RETAINED")
	}
	var sessions, retained int
	if _, err := fmt.Sscanf(spec, "%d,%d", &sessions, &retained); err != nil {
		b.Fatalf("MOAT_RECOVERY_SCALE=%q: want SESSIONS,RETAINED", spec)
	}
	dir := os.Getenv("MOAT_RECOVERY_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	if _, err := os.Stat(filepath.Join(dir, store.DBFile)); err != nil {
		start := time.Now()
		fillScale(b, dir, sessions, retained)
		b.Logf("filled %d sessions and %d retained messages in %s", sessions, retained, time.Since(start).Round(time.Millisecond))
	}
	fi, err := os.Stat(filepath.Join(dir, store.DBFile))
	if err != nil {
		b.Fatal(err)
	}
	var m map[string]float64
	for b.Loop() {
		m = recoverChild(b, dir)
	}
	if int(m["sessions"]) != sessions || int(m["retained"]) != retained {
		b.Fatalf("recovered %v sessions and %v retained messages", m["sessions"], m["retained"])
	}
	b.ReportMetric(m["open_s"], "s-open")
	b.ReportMetric(m["new_s"], "s-broker")
	b.ReportMetric(m["open_s"]+m["new_s"], "s-restart")
	b.ReportMetric(m["rss_mib"], "MiB-rss")
	b.ReportMetric(m["hwm_mib"], "MiB-rss-peak")
	b.ReportMetric(m["heap_mib"], "MiB-heap")
	b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-on-disk")
}

// fillScale writes the store in big commits, without fsync (sync off;
// Close syncs).
func fillScale(b *testing.B, dir string, sessions, retained int) {
	cfg := store.Config{Dir: dir, Sync: store.SyncOff, KeyFile: filepath.Join(dir, store.KeyFile)}
	st, err := store.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var ops []store.Op
	flush := func(force bool) {
		if len(ops) < 5000 && !force {
			return
		}
		if err := st.Commit(context.Background(), ops...); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	payload := make([]byte, 64)
	for i := range sessions {
		id := fmt.Sprintf("device-%06d", i)
		ops = append(ops, store.PutSession{Session: &store.Session{ClientID: id, Owner: "user:" + id, OwnerVerified: true,
			ExpiryInterval: store.NeverExpires, ProtocolVersion: 4, Subscriptions: []store.Subscription{{Filter: "cmd/" + id + "/#", QoS: 1}}}})
		m := &store.Message{ID: st.NextID(), Topic: "cmd/" + id + "/set", Payload: payload, QoS: 1, From: "controller"}
		ops = append(ops, store.PutMessage{Message: m},
			store.PutDelivery{Delivery: &store.Delivery{ClientID: id, Seq: st.NextID(), MsgID: m.ID, QoS: 1}})
		flush(false)
	}
	// One publisher (with its certificate) per ten retained topics.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "scale CA"}, NotBefore: time.Now(),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	var pub *store.Publisher
	for i := range retained {
		if i%10 == 0 {
			id := fmt.Sprintf("sensor-%06d", i/10)
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: id},
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, key)
			if err != nil {
				b.Fatal(err)
			}
			pub = &store.Publisher{Listener: "tls-8883", Addr: "192.0.2.7", ProtocolVersion: 4, ClientID: id, Username: id,
				Certs: [][]byte{der}}
		}
		ops = append(ops, store.PutRetained{Retained: &store.Retained{Topic: fmt.Sprintf("state/%s/%d", pub.ClientID, i%10),
			Payload: payload, QoS: 1, Owner: "user:" + pub.ClientID, Publisher: pub}})
		flush(false)
	}
	flush(true)
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
}

// recoverChild runs TestRecoveryChild in a new process on dir and returns
// what it measured.
func recoverChild(b *testing.B, dir string) map[string]float64 {
	cmd := exec.Command(os.Args[0], "-test.run=^TestRecoveryChild$", "-test.v")
	cmd.Env = append(os.Environ(), "MOAT_RECOVERY_CHILD="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("child: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		rest, ok := strings.CutPrefix(line, "RECOVERY ")
		if !ok {
			continue
		}
		m := map[string]float64{}
		for _, kv := range strings.Fields(rest) {
			k, v, _ := strings.Cut(kv, "=")
			m[k], _ = strconv.ParseFloat(v, 64)
		}
		return m
	}
	b.Fatalf("child printed no result:\n%s", out)
	return nil
}

// TestRecoveryChild is BenchmarkRecoveryScale's measuring process.
func TestRecoveryChild(t *testing.T) {
	dir := os.Getenv("MOAT_RECOVERY_CHILD")
	if dir == "" {
		t.Skip("run by BenchmarkRecoveryScale")
	}
	start := time.Now()
	st, err := store.Open(store.Config{Dir: dir, KeyFile: filepath.Join(dir, store.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
	opened := time.Now()
	// Limits raised for the retained messages (defaults 100,000 and 256
	// MiB): an operator keeping a million raises them too.
	srv, err := broker.New(broker.Config{Persistence: brokerstore.New(st), SysInterval: -1, CheckRetainSource: true,
		MaxRetained: 10_000_000, MaxRetainedBytes: 8 << 30, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	built := time.Now()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, hwm := procStatus("VmRSS"), procStatus("VmHWM")
	s := srv.Stats()
	fmt.Printf("RECOVERY open_s=%.3f new_s=%.3f rss_mib=%.1f hwm_mib=%.1f heap_mib=%.1f sessions=%d retained=%d\n",
		opened.Sub(start).Seconds(), built.Sub(opened).Seconds(), rss, hwm, float64(ms.HeapAlloc)/(1<<20), s.Sessions, s.Retained)
	srv.Shutdown(context.Background())
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// procStatus returns a size field of /proc/self/status in MiB.
func procStatus(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
