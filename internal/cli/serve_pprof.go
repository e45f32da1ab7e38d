package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// startPprof serves Go's runtime profiles (net/http/pprof) on addr for
// performance work, with mutex contention sampled. The handler exposes goroutine stacks and heap
// contents, so only loopback addresses are accepted: reach it from
// elsewhere through an SSH tunnel. The caller must call stop, which closes
// the server and waits for its goroutine; ctx bounds only the listen.
func startPprof(ctx context.Context, addr string, log *slog.Logger) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("serve: --pprof %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if host == "localhost" {
		ip, err = netip.MustParseAddr("127.0.0.1"), nil
	}
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("serve: --pprof %q: only a loopback address (127.0.0.1, ::1 or localhost) is allowed, because profiles reveal memory contents", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve: --pprof: %w", err)
	}
	// Sample one contended lock in ten for /debug/pprof/mutex; costs
	// nothing where locks are not contended.
	runtime.SetMutexProfileFraction(10)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof: server stopped", "err", err)
		}
	})
	log.Info("pprof: serving runtime profiles", "addr", ln.Addr().String())
	return func() {
		srv.Close()
		wg.Wait()
	}, nil
}
