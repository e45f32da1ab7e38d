//go:build linux

package bench

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// ipBindAddressNoPort (IP_BIND_ADDRESS_NO_PORT, Linux 4.2) lets a socket
// bound to a source address take its port at connect, from the 4-tuple,
// instead of reserving one at bind: without it every source address is
// limited to the ephemeral range once.
const ipBindAddressNoPort = 24

// Flood offers connection attempts to cfg.Addr as FloodConfig describes
// and returns what happened. It returns early, with what was done, when
// ctx ends. Linux only.
func Flood(ctx context.Context, cfg FloodConfig) (*FloodResult, error) {
	cfg, ap, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	res := &FloodResult{Addr: ap.String()}
	for _, s := range cfg.Sources {
		res.Sources = append(res.Sources, s.String())
	}
	var b0 ProcStat
	if cfg.BrokerPID != 0 {
		if b0, err = ReadProc(cfg.BrokerPID); err != nil {
			return nil, err
		}
	}
	g0 := selfCPU()
	start := time.Now()
	per := cfg.Rate / float64(cfg.Workers)
	total := int64(cfg.Rate * cfg.Duration.Seconds())
	workers := make([]*floodWorker, cfg.Workers)
	var wg sync.WaitGroup
	for i := range workers {
		// Worker i makes attempts i, i+W, i+2W, ... of the whole flood.
		n := total / int64(cfg.Workers)
		if int64(i) < total%int64(cfg.Workers) {
			n++
		}
		w := &floodWorker{cfg: &cfg, dst: ap, rate: per, total: n, first: i}
		workers[i] = w
		wg.Go(func() { w.run(ctx, start) })
	}
	wg.Wait()
	var lastOffer time.Time
	for _, w := range workers {
		res.Offered += w.offered
		res.Established += w.established
		res.Reset += w.reset
		res.Refused += w.refused
		res.TimedOut += w.timedOut
		res.Errors += w.errors
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
		if w.lastOffer.After(lastOffer) {
			lastOffer = w.lastOffer
		}
	}
	if d := lastOffer.Sub(start); d > 0 {
		res.OfferSeconds = d.Seconds()
		// n attempts span n-1 intervals of the schedule.
		res.OfferedPerSec = float64(max(res.Offered-1, 0)) / res.OfferSeconds
	}
	res.GeneratorCPU = selfCPU() - g0
	if cfg.BrokerPID != 0 {
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
		}
		b1, err := ReadProc(cfg.BrokerPID)
		if err != nil {
			return res, err
		}
		res.BrokerCPU = b1.CPU - b0.CPU
		res.BrokerSeconds = b1.At.Sub(b0.At).Seconds()
		if n := res.Established + res.Reset; n > 0 {
			res.BrokerCPUPerAttempt = res.BrokerCPU / time.Duration(n)
		}
	}
	return res, ctx.Err()
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floodWorker makes its share of the attempts on one OS thread, with its
// own epoll instance for the handshakes in progress.
type floodWorker struct {
	cfg   *FloodConfig
	dst   netip.AddrPort
	rate  float64 // attempts per second
	total int64
	first int // index of its first attempt (source rotation)

	offered, established, reset, refused, timedOut, errors int64
	firstErr                                               error
	lastOffer                                              time.Time
}

func (w *floodWorker) fail(err error) {
	w.errors++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

func (w *floodWorker) run(ctx context.Context, start time.Time) {
	// The worker blocks in epoll_wait and makes raw system calls: a
	// thread of its own keeps it off the Go scheduler's other work.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		w.fail(err)
		return
	}
	defer syscall.Close(ep)
	pending := map[int]time.Time{} // fd → when connect was called
	defer func() {
		for fd := range pending {
			syscall.Close(fd)
		}
	}()
	events := make([]syscall.EpollEvent, 256)
	timeout := w.cfg.ConnectTimeout
	lastSweep := start
	i := int64(0)
	for {
		now := time.Now()
		if ctx.Err() != nil {
			return
		}
		// Open loop: every attempt due by now is made, whatever the
		// broker does.
		due := min(int64(now.Sub(start).Seconds()*w.rate)+1, w.total)
		if i < due {
			for ; i < due; i++ {
				w.attempt(ep, pending, int64(w.first)+i*int64(w.cfg.Workers))
			}
			w.lastOffer = now
		}
		if i >= w.total && len(pending) == 0 {
			return
		}
		if now.Sub(lastSweep) > timeout/10 {
			lastSweep = now
			for fd, t := range pending {
				if now.Sub(t) > timeout {
					syscall.Close(fd)
					delete(pending, fd)
					w.timedOut++
				}
			}
		}
		wait := 1 // ms
		if i >= w.total {
			wait = 10
		} else if next := start.Add(time.Duration(float64(i) / w.rate * 1e9)); time.Until(next) > time.Millisecond {
			wait = int(time.Until(next) / time.Millisecond)
		}
		n, err := syscall.EpollWait(ep, events, wait)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			w.fail(err)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if _, ok := pending[fd]; !ok {
				continue
			}
			delete(pending, fd)
			w.finish(fd)
		}
	}
}

// attempt opens a socket and starts connecting it; k is the attempt's
// index in the whole flood.
func (w *floodWorker) attempt(ep int, pending map[int]time.Time, k int64) {
	w.offered++
	domain := syscall.AF_INET
	if !w.dst.Addr().Unmap().Is4() {
		domain = syscall.AF_INET6
	}
	fd, err := syscall.Socket(domain, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		w.fail(err)
		return
	}
	// A reset at close: no TIME_WAIT on either side.
	if err := syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0}); err != nil {
		syscall.Close(fd)
		w.fail(err)
		return
	}
	if src := w.cfg.Sources; len(src) > 0 {
		s := src[k%int64(len(src))]
		syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
		if err := syscall.Bind(fd, sockaddr(s, 0)); err != nil {
			syscall.Close(fd)
			w.fail(err)
			return
		}
	}
	err = syscall.Connect(fd, sockaddr(w.dst.Addr(), w.dst.Port()))
	switch {
	case err == nil:
		w.established++
		syscall.Close(fd)
	case errors.Is(err, syscall.EINPROGRESS):
		ev := syscall.EpollEvent{Events: syscall.EPOLLOUT, Fd: int32(fd)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			syscall.Close(fd)
			w.fail(err)
			return
		}
		pending[fd] = time.Now()
	case errors.Is(err, syscall.ECONNREFUSED):
		w.refused++
		syscall.Close(fd)
	default:
		syscall.Close(fd)
		w.fail(err)
	}
}

// finish reads the outcome of a connect that completed and closes the
// socket (with a reset when it was established). Closing removes it from
// the epoll set.
func (w *floodWorker) finish(fd int) {
	e, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	switch {
	case err != nil:
		w.fail(err)
	case e == 0:
		w.established++
	case syscall.Errno(e) == syscall.ECONNRESET:
		// Accepted and closed with a reset by the broker first.
		w.reset++
	case syscall.Errno(e) == syscall.ECONNREFUSED:
		w.refused++
	case syscall.Errno(e) == syscall.ETIMEDOUT:
		w.timedOut++
	default:
		w.fail(syscall.Errno(e))
	}
	syscall.Close(fd)
}

func sockaddr(a netip.Addr, port uint16) syscall.Sockaddr {
	a = a.Unmap()
	if a.Is4() {
		return &syscall.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	return &syscall.SockaddrInet6{Addr: a.As16(), Port: int(port)}
}
