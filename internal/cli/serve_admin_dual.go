package cli

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// dualListener serves TLS and plain connections on one loopback port: it
// reads the first byte of each connection and hands a TLS handshake
// record (0x16) to tls.Server, anything else through as plain HTTP. Used
// for the admin API on loopback only, where plain HTTP is accepted anyway,
// so that both https:// and http:// URLs work there.
type dualListener struct {
	net.Listener
	cfg *tls.Config

	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup // the accept loop and the sniffing goroutines
	err   error          // the accept loop's error, valid after conns is closed

	mu      sync.Mutex
	pending map[net.Conn]struct{} // connections being sniffed; Close closes them
}

// sniffTimeout bounds the wait for a connection's first byte.
const sniffTimeout = 10 * time.Second

// maxSniffing bounds the connections whose first byte is awaited.
const maxSniffing = 64

func newDualListener(ln net.Listener, cfg *tls.Config) *dualListener {
	d := &dualListener{Listener: ln, cfg: cfg, conns: make(chan net.Conn), done: make(chan struct{}), pending: map[net.Conn]struct{}{}}
	d.wg.Go(d.loop)
	return d
}

func (d *dualListener) loop() {
	sem := make(chan struct{}, maxSniffing)
	defer close(d.conns)
	for {
		c, err := d.Listener.Accept()
		if err != nil {
			d.err = err
			return
		}
		select {
		case sem <- struct{}{}:
		case <-d.done:
			c.Close()
			return
		}
		d.wg.Go(func() {
			defer func() { <-sem }()
			d.sniff(c)
		})
	}
}

func (d *dualListener) sniff(c net.Conn) {
	d.mu.Lock()
	select {
	case <-d.done:
		d.mu.Unlock()
		c.Close()
		return
	default:
	}
	d.pending[c] = struct{}{}
	d.mu.Unlock()
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 16)
	first, err := br.Peek(1)
	c.SetReadDeadline(time.Time{})
	d.mu.Lock()
	delete(d.pending, c)
	d.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	var out net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == 0x16 {
		out = tls.Server(out, d.cfg)
	}
	select {
	case d.conns <- out:
	case <-d.done:
		c.Close()
	}
}

// Accept returns the next sniffed connection.
func (d *dualListener) Accept() (net.Conn, error) {
	select {
	case c, ok := <-d.conns:
		if !ok {
			return nil, d.err
		}
		return c, nil
	case <-d.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the goroutines.
func (d *dualListener) Close() error {
	err := net.ErrClosed
	d.once.Do(func() {
		d.mu.Lock()
		close(d.done)
		for c := range d.pending {
			c.Close()
		}
		d.mu.Unlock()
		err = d.Listener.Close()
		d.wg.Wait()
	})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// peekedConn reads through the buffer that holds the sniffed byte.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
