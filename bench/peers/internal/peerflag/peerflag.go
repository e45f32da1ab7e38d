// Package peerflag holds what the benchmark's peer brokers share: their
// command line, the TLS configuration of the mutual-TLS listener, waiting
// for a port left in use by the previous broker, and shutting down on a
// signal.
package peerflag

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Flags is the command line of a peer broker.
type Flags struct {
	Plain, MTLS string // listener addresses; empty: none
	CAFile      string // client CA of the mutual-TLS listener
	Cert, Key   string // server certificate and key
	Dir         string // state directory (nats: JetStream store); empty: a temporary one
}

// Parse parses the command line of the peer named name.
func Parse(name string) Flags {
	var f Flags
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.StringVar(&f.Plain, "plain", "", "plain MQTT listener `address`, e.g. 127.0.0.1:18830")
	fs.StringVar(&f.MTLS, "mtls", "", "mutual-TLS MQTT listener `address`")
	fs.StringVar(&f.CAFile, "cafile", "", "CA `file` that signs client certificates (mutual TLS)")
	fs.StringVar(&f.Cert, "cert", "", "server certificate `file` (PEM)")
	fs.StringVar(&f.Key, "key", "", "server key `file` (PEM)")
	fs.StringVar(&f.Dir, "dir", "", "state `directory` (default: a temporary one, removed at exit)")
	fs.Parse(os.Args[1:])
	if f.Plain == "" && f.MTLS == "" {
		Fail(name, errors.New("no listener: give -plain and/or -mtls"))
	}
	if f.MTLS != "" && (f.CAFile == "" || f.Cert == "" || f.Key == "") {
		Fail(name, errors.New("-mtls needs -cafile, -cert and -key"))
	}
	return f
}

// Fail prints err and exits with status 1.
func Fail(name string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}

// TLS returns the server configuration of the mutual-TLS listener: the
// client must present a certificate signed by CAFile.
func (f Flags) TLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client CA %s: no certificate in it", f.CAFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// WaitBindable waits up to 10 s until every address can be bound: the
// previous broker of a benchmark may still hold a port for a moment after
// it exited.
func WaitBindable(addrs ...string) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		if a == "" {
			continue
		}
		for {
			ln, err := net.Listen("tcp", a)
			if err == nil {
				ln.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("cannot listen on %s: %w", a, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// WaitSignal blocks until SIGINT or SIGTERM.
func WaitSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
}
