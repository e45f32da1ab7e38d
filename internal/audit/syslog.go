package audit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SyslogConfig configures forwarding of the audit lines to a syslog
// receiver in RFC 5424 format.
type SyslogConfig struct {
	// Network is "udp", "tcp" or "unix" (a datagram socket such as
	// /dev/log). Required.
	Network string

	// Address is host:port for udp and tcp, a socket path for unix.
	// Required.
	Address string

	// Facility is the syslog facility number (0-23). Default 10
	// (authpriv). Every line is sent with severity 5 (notice).
	Facility int

	// Hostname is the HOSTNAME field. Default: os.Hostname().
	Hostname string

	// QueueSize bounds the lines waiting to be sent; beyond it lines are
	// dropped and counted. Default 1,000.
	QueueSize int

	// Timeout bounds a connection attempt and a write. Default 2 s.
	Timeout time.Duration
}

// forwarder sends lines to syslog from its own goroutine; send never
// blocks.
type forwarder struct {
	cfg      SyslogConfig
	now      func() time.Time
	pri      string
	host     string
	pid      string
	ch       chan []byte
	exited   chan struct{}
	sent     atomic.Uint64
	dropped  atomic.Uint64
	mu       sync.Mutex // guards conn against close on timeout
	conn     net.Conn
	lastDial time.Time
}

func newForwarder(cfg SyslogConfig, now func() time.Time) (*forwarder, error) {
	var errs []error
	switch cfg.Network {
	case "udp", "tcp", "unix":
	default:
		errs = append(errs, fmt.Errorf("audit: syslog network %q: use udp, tcp or unix", cfg.Network))
	}
	if cfg.Address == "" {
		errs = append(errs, errors.New("audit: syslog address is empty"))
	}
	if cfg.Facility == 0 {
		cfg.Facility = 10
	}
	if cfg.Facility < 0 || cfg.Facility > 23 {
		errs = append(errs, fmt.Errorf("audit: syslog facility %d is not in 0-23", cfg.Facility))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	host := cfg.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	if host == "" {
		host = "-"
	}
	f := &forwarder{
		cfg:    cfg,
		now:    now,
		pri:    "<" + strconv.Itoa(cfg.Facility*8+5) + ">1 ",
		host:   host,
		pid:    strconv.Itoa(os.Getpid()),
		ch:     make(chan []byte, cfg.QueueSize),
		exited: make(chan struct{}),
	}
	go f.run()
	return f, nil
}

// send queues a copy of line; called by the log's writer only.
func (f *forwarder) send(line []byte) {
	select {
	case f.ch <- append([]byte(nil), line...):
	default:
		f.dropped.Add(1)
	}
}

// format builds the RFC 5424 message: PRI VERSION TIMESTAMP HOSTNAME
// APP-NAME PROCID MSGID STRUCTURED-DATA MSG, with the audit line as MSG.
func (f *forwarder) format(line []byte) []byte {
	ts := f.now().UTC().Format("2006-01-02T15:04:05.000000Z")
	m := make([]byte, 0, len(line)+96)
	m = append(m, f.pri...)
	m = append(m, ts...)
	m = append(m, ' ')
	m = append(m, f.host...)
	m = append(m, " moat "...)
	m = append(m, f.pid...)
	m = append(m, " audit - "...)
	return append(m, line...)
}

func (f *forwarder) run() {
	defer close(f.exited)
	for line := range f.ch {
		if err := f.write(f.format(line)); err != nil {
			f.dropped.Add(1)
			f.mu.Lock()
			if f.conn != nil {
				f.conn.Close()
				f.conn = nil
			}
			f.mu.Unlock()
			continue
		}
		f.sent.Add(1)
	}
	f.mu.Lock()
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
}

func (f *forwarder) write(msg []byte) error {
	f.mu.Lock()
	c := f.conn
	f.mu.Unlock()
	if c == nil {
		// At most one connection attempt a second while the receiver is
		// away; lines meanwhile are dropped and counted.
		if time.Since(f.lastDial) < time.Second {
			return errors.New("audit: syslog receiver unavailable")
		}
		f.lastDial = time.Now()
		network := f.cfg.Network
		if network == "unix" {
			network = "unixgram"
		}
		var err error
		c, err = net.DialTimeout(network, f.cfg.Address, f.cfg.Timeout)
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.conn = c
		f.mu.Unlock()
	}
	if err := c.SetWriteDeadline(time.Now().Add(f.cfg.Timeout)); err != nil {
		return err
	}
	if f.cfg.Network == "tcp" {
		// RFC 6587 octet counting.
		msg = append([]byte(strconv.Itoa(len(msg))+" "), msg...)
	}
	_, err := c.Write(msg)
	return err
}

// close stops the forwarder after the queued lines are sent, or after the
// timeout (the rest is dropped and counted).
func (f *forwarder) close() {
	close(f.ch)
	t := time.NewTimer(f.cfg.Timeout)
	defer t.Stop()
	select {
	case <-f.exited:
		return
	case <-t.C:
	}
	f.mu.Lock()
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
	<-f.exited
}
