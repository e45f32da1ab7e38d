package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/coder/websocket"
	"golang.org/x/net/proxy"
)

// dialer returns the dialer for TCP connections: the configured one, or
// a SOCKS5 proxy in front of it.
func (c *Client) dialer() (ContextDialer, error) {
	base := c.cfg.Dialer
	if base == nil {
		base = &net.Dialer{}
	}
	if c.proxy == nil {
		return base, nil
	}
	var auth *proxy.Auth
	if u := c.proxy.User; u != nil {
		pw, _ := u.Password()
		auth = &proxy.Auth{User: u.Username(), Password: pw}
	}
	d, err := proxy.SOCKS5("tcp", c.proxy.Host, auth, forwardDialer{base})
	if err != nil {
		return nil, fmt.Errorf("client: proxy %s: %v", c.proxy.Redacted(), err)
	}
	cd, ok := d.(proxy.ContextDialer)
	if !ok {
		return nil, fmt.Errorf("client: proxy %s: dialer has no context support", c.proxy.Redacted())
	}
	return &socksDialer{d: cd, remoteDNS: c.proxy.Scheme == "socks5h"}, nil
}

// forwardDialer adapts a ContextDialer to proxy.Dialer.
type forwardDialer struct{ d ContextDialer }

func (f forwardDialer) Dial(network, addr string) (net.Conn, error) {
	return f.d.DialContext(context.Background(), network, addr)
}

func (f forwardDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f.d.DialContext(ctx, network, addr)
}

// socksDialer dials through SOCKS5. With remoteDNS false (socks5://) the
// host name is resolved here and the proxy gets an IP address; with
// remoteDNS (socks5h://) the proxy gets the name.
type socksDialer struct {
	d         proxy.ContextDialer
	remoteDNS bool
}

func (s *socksDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if !s.remoteDNS {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if net.ParseIP(host) == nil {
			ips, err := net.DefaultResolver.LookupHost(ctx, host)
			if err != nil {
				return nil, err
			}
			addr = net.JoinHostPort(ips[0], port)
		}
	}
	return s.d.DialContext(ctx, network, addr)
}

// tlsConfig returns the TLS configuration for sv.
func (c *Client) tlsConfig(sv server) *tls.Config {
	var tc *tls.Config
	if c.cfg.TLSConfig != nil {
		tc = c.cfg.TLSConfig.Clone()
	} else {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if tc.ServerName == "" {
		tc.ServerName = sv.host
	}
	return tc
}

// dial opens the transport to sv: TCP, TLS, WebSocket or secure WebSocket.
func (c *Client) dial(ctx context.Context, sv server) (net.Conn, error) {
	d, err := c.dialer()
	if err != nil {
		return nil, err
	}
	switch sv.scheme {
	case "tcp", "tls":
		nc, err := d.DialContext(ctx, "tcp", sv.addr)
		if err != nil {
			return nil, err
		}
		if sv.scheme == "tcp" {
			return nc, nil
		}
		tc := tls.Client(nc, c.tlsConfig(sv))
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		return tc, nil
	}
	u := *sv.url
	if u.Path == "" {
		u.Path = "/"
	}
	u.Scheme = map[string]string{"ws": "http", "wss": "https"}[sv.scheme]
	tr := &http.Transport{
		DialContext:       d.DialContext,
		TLSClientConfig:   c.tlsConfig(sv),
		DisableKeepAlives: true,
		Proxy:             nil, // the SOCKS proxy, if any, is in DialContext
	}
	defer tr.CloseIdleConnections()
	wc, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: tr},
		HTTPHeader:   c.cfg.WebSocketHeader,
		Subprotocols: []string{"mqtt"},
	})
	if err != nil {
		return nil, fmt.Errorf("WebSocket handshake with %s: %w", (&url.URL{Scheme: sv.scheme, Host: sv.addr, Path: u.Path}).String(), err)
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if wc.Subprotocol() != "mqtt" {
		wc.Close(websocket.StatusProtocolError, "subprotocol mqtt required")
		return nil, fmt.Errorf("WebSocket server did not accept subprotocol \"mqtt\" (got %q)", wc.Subprotocol())
	}
	// One WebSocket message may carry many MQTT packets; NetConn streams
	// it, and the packet reader enforces MaxPacketSize per packet.
	wc.SetReadLimit(-1)
	return websocket.NetConn(context.Background(), wc, websocket.MessageBinary), nil
}
