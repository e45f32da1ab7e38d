package listener

import (
	"bufio"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"

	"github.com/moatmq/moat/internal/tlsconf"
)

// DefaultProxyHeaderTimeout is how long a trusted balancer has to send the
// whole PROXY header after connecting.
const DefaultProxyHeaderTimeout = 5 * time.Second

// UntrustedPolicy says what a PROXY listener does with a connection from a
// source outside ProxyConfig.Trusted.
type UntrustedPolicy uint8

const (
	// RefuseUntrusted closes connections from untrusted sources at once. The
	// default: a PROXY listener is meant to be reached only through the
	// balancer.
	RefuseUntrusted UntrustedPolicy = iota
	// PassUntrusted serves connections from untrusted sources without reading
	// a PROXY header: the TCP peer is the client. Should such a peer send a
	// PROXY header anyway, the broker sees it as MQTT bytes and rejects the
	// connection as malformed, so it cannot spoof an address or identity.
	PassUntrusted
)

// ProxyConfig enables the PROXY protocol (v1 and v2, detected per
// connection) on a listener.
//
// The trust model: only sources in Trusted may send a PROXY header, and they
// must send one (the spec forbids guessing whether a header is present).
// Connections from other sources are refused, or served as direct clients
// under PassUntrusted. A header whose PP2_TYPE_SSL TLV is malformed or
// ambiguous is refused, so identity information is never silently dropped.
type ProxyConfig struct {
	// Trusted lists the balancer addresses allowed to send a PROXY header.
	// Required (at least one prefix); IPv4-mapped IPv6 peers match IPv4
	// prefixes.
	Trusted []netip.Prefix

	// Untrusted is the policy for other sources. Default: RefuseUntrusted.
	Untrusted UntrustedPolicy

	// HeaderTimeout bounds the time from accept to a complete header.
	// Default: DefaultProxyHeaderTimeout.
	HeaderTimeout time.Duration
}

func (pc *ProxyConfig) validate() []error {
	var errs []error
	if len(pc.Trusted) == 0 {
		errs = append(errs, errors.New("listener: PROXY protocol needs at least one trusted source prefix (the load balancer's addresses)"))
	}
	for i, p := range pc.Trusted {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("listener: PROXY trusted prefix #%d is invalid", i+1))
		}
	}
	if pc.Untrusted > PassUntrusted {
		errs = append(errs, fmt.Errorf("listener: unknown PROXY untrusted-source policy %d", pc.Untrusted))
	}
	if pc.HeaderTimeout < 0 {
		errs = append(errs, errors.New("listener: PROXY HeaderTimeout must not be negative"))
	}
	return errs
}

type proxyPolicy struct {
	trustedPrefixes []netip.Prefix
	passUntrusted   bool
	headerTimeout   time.Duration
}

func newProxyPolicy(pc *ProxyConfig) *proxyPolicy {
	p := &proxyPolicy{
		passUntrusted: pc.Untrusted == PassUntrusted,
		headerTimeout: pc.HeaderTimeout,
	}
	if p.headerTimeout == 0 {
		p.headerTimeout = DefaultProxyHeaderTimeout
	}
	for _, pfx := range pc.Trusted {
		p.trustedPrefixes = append(p.trustedPrefixes, pfx.Masked())
	}
	return p
}

func (p *proxyPolicy) trusted(a net.Addr) bool {
	ap, ok := addrPort(a)
	if !ok {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, pfx := range p.trustedPrefixes {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}

// proxyReadBuffer is the read buffer for the header: a v1 line must fit in it
// (at most 107 bytes); v2 headers of any length are read through it.
const proxyReadBuffer = 512

// readProxyHeader reads and checks the header under a deadline, keeping any
// bytes read past it for Read.
func (c *Conn) readProxyHeader(timeout time.Duration) error {
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	br := bufio.NewReaderSize(c.Conn, proxyReadBuffer)
	h, err := proxyproto.Read(br)
	if err != nil {
		if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
			return errors.New("listener: trusted source sent no PROXY header (is the balancer configured to send one?)")
		}
		return err
	}
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	pi, err := proxyInfoFromHeader(h)
	if err != nil {
		return err
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		c.buffered = append([]byte(nil), b...)
	}
	c.proxy = pi
	return nil
}

// ProxyInfo is what a PROXY header said. Values are copies; the struct is
// shared by readers and must not be modified.
type ProxyInfo struct {
	// Version is 1 or 2.
	Version int
	// Local is true for a LOCAL command (v2) or UNKNOWN family (v1): the
	// balancer's own connection, typically a health check. Source and
	// Destination are nil then, and the TCP peer is the client.
	Local bool
	// Source and Destination are the client's address and the address it
	// connected to on the balancer (*net.TCPAddr); nil when Local.
	Source, Destination net.Addr

	// The following come from PROXY v2 TLVs; zero when absent.
	ALPN      string // PP2_TYPE_ALPN: protocol the client negotiated with the balancer
	Authority string // PP2_TYPE_AUTHORITY: the host name (TLS SNI) the client asked for
	UniqueID  []byte // PP2_TYPE_UNIQUE_ID: balancer's connection ID
	// AWSVPCEndpointID is the PP2_TYPE_AWS (0xEA) VPC endpoint ID an AWS
	// Network Load Balancer sends for PrivateLink connections.
	AWSVPCEndpointID string
	// TLS is the PP2_TYPE_SSL TLV: what a TLS-terminating balancer knows
	// about the client's TLS session. nil when absent.
	TLS *ProxyTLSInfo
	// TLVs are all top-level TLVs as received (PP2_TYPE_NOOP dropped), for
	// types this package does not interpret.
	TLVs []ProxyTLV
}

// ProxyTLV is one raw PROXY v2 type-length-value record.
type ProxyTLV struct {
	Type  byte
	Value []byte
}

// ProxyTLSInfo is the PP2_TYPE_SSL TLV of a PROXY v2 header: the TLS session
// between the client and a TLS-terminating balancer. HAProxy sends it with
// "send-proxy-v2-ssl" (and the CN with "send-proxy-v2-ssl-cn"); Ghostunnel
// ("--proxy-protocol-mode=tls-full") also sends the client certificate
// itself in PP2_SUBTYPE_SSL_CLIENT_CERT (0x28), a later addition to the spec.
// Balancers that verify the client certificate but forward no certificate
// give only the CN.
type ProxyTLSInfo struct {
	// ClientSSL: the client connected to the balancer over TLS
	// (PP2_CLIENT_SSL).
	ClientSSL bool
	// CertConn: the client presented a certificate on this connection
	// (PP2_CLIENT_CERT_CONN).
	CertConn bool
	// CertSession: the client presented a certificate at least once in the
	// TLS session this connection belongs to (PP2_CLIENT_CERT_SESS; set on
	// resumption).
	CertSession bool
	// VerifyResult is the balancer's verification result: 0 means success
	// (X509_V_OK). HAProxy reports 0 also when no certificate was presented,
	// so never use it alone: see Verified.
	VerifyResult uint32

	Version    string // PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3"
	Cipher     string // PP2_SUBTYPE_SSL_CIPHER, e.g. "TLS_AES_128_GCM_SHA256"
	CommonName string // PP2_SUBTYPE_SSL_CN: client certificate subject CN
	SigAlg     string // PP2_SUBTYPE_SSL_SIG_ALG (of the balancer's certificate)
	KeyAlg     string // PP2_SUBTYPE_SSL_KEY_ALG (of the balancer's certificate)

	// ClientCertificate is the client's leaf certificate when the balancer
	// sent it (PP2_SUBTYPE_SSL_CLIENT_CERT); nil otherwise. It was verified
	// by the balancer (see Verified), not by this package.
	ClientCertificate *x509.Certificate
}

// Verified reports whether the balancer says the client presented a
// certificate and it verified successfully. This is the only field an
// identity mapping should trust, and only because the header came from a
// trusted balancer.
func (t *ProxyTLSInfo) Verified() bool {
	return t != nil && t.ClientSSL && (t.CertConn || t.CertSession) && t.VerifyResult == 0
}

// proxyInfoFromHeader converts a parsed header, refusing what the broker
// cannot use safely: datagram or unix addresses on a TCP listener, malformed
// or repeated SSL TLVs, an unparsable client certificate.
func proxyInfoFromHeader(h *proxyproto.Header) (*ProxyInfo, error) {
	pi := &ProxyInfo{Version: int(h.Version)}
	switch {
	case h.Command.IsLocal() || h.TransportProtocol.IsUnspec():
		pi.Local = true
	case h.Command.IsProxy():
		if !h.TransportProtocol.IsStream() || !(h.TransportProtocol.IsIPv4() || h.TransportProtocol.IsIPv6()) {
			return nil, fmt.Errorf("listener: PROXY header carries a non-TCP address family %#x", byte(h.TransportProtocol))
		}
		src, ok1 := h.SourceAddr.(*net.TCPAddr)
		dst, ok2 := h.DestinationAddr.(*net.TCPAddr)
		if !ok1 || !ok2 {
			return nil, errors.New("listener: PROXY header lacks TCP source or destination address")
		}
		pi.Source, pi.Destination = cloneTCPAddr(src), cloneTCPAddr(dst)
	default:
		return nil, fmt.Errorf("listener: unsupported PROXY command %#x", byte(h.Command))
	}
	if h.Version != 2 {
		return pi, nil
	}
	tlvs, err := h.TLVs()
	if err != nil {
		return nil, fmt.Errorf("listener: PROXY header TLVs: %w", err)
	}
	if pi.Local {
		// A LOCAL header (or one without addresses) describes the
		// balancer's own connection, a health check: there is no client,
		// so no client identity. A TLS TLV claiming one contradicts the
		// header and is refused; other TLVs are dropped.
		for _, t := range tlvs {
			if t.Type == proxyproto.PP2_TYPE_SSL {
				return nil, errors.New("listener: a PROXY LOCAL (or address-less) header carries a client TLS (PP2_TYPE_SSL) TLV; such a connection has no client to identify")
			}
		}
		return pi, nil
	}
	seen := make(map[proxyproto.PP2Type]bool)
	for _, t := range tlvs {
		if t.Type == proxyproto.PP2_TYPE_NOOP {
			continue
		}
		pi.TLVs = append(pi.TLVs, ProxyTLV{Type: byte(t.Type), Value: append([]byte(nil), t.Value...)})
		switch t.Type {
		case proxyproto.PP2_TYPE_ALPN, proxyproto.PP2_TYPE_AUTHORITY, proxyproto.PP2_TYPE_UNIQUE_ID, proxyproto.PP2_TYPE_SSL:
			if seen[t.Type] {
				return nil, fmt.Errorf("listener: PROXY header repeats TLV %#x", byte(t.Type))
			}
			seen[t.Type] = true
		}
		switch t.Type {
		case proxyproto.PP2_TYPE_ALPN:
			pi.ALPN = string(t.Value)
		case proxyproto.PP2_TYPE_AUTHORITY:
			pi.Authority = string(t.Value)
		case proxyproto.PP2_TYPE_UNIQUE_ID:
			pi.UniqueID = append([]byte(nil), t.Value...)
		case tlvparse.PP2_TYPE_AWS:
			if tlvparse.IsAWSVPCEndpointID(t) {
				if id, err := tlvparse.AWSVPCEndpointID(t); err == nil {
					pi.AWSVPCEndpointID = id
				}
			}
		case proxyproto.PP2_TYPE_SSL:
			ti, err := proxyTLSFromTLV(t)
			if err != nil {
				return nil, err
			}
			pi.TLS = ti
		}
	}
	return pi, nil
}

func proxyTLSFromTLV(t proxyproto.TLV) (*ProxyTLSInfo, error) {
	if len(t.Value) < 5 {
		return nil, errors.New("listener: PROXY SSL TLV is too short")
	}
	ssl, err := tlvparse.SSL(t)
	if err != nil {
		return nil, fmt.Errorf("listener: PROXY SSL TLV: %w", err)
	}
	ti := &ProxyTLSInfo{
		ClientSSL:    ssl.ClientSSL(),
		CertConn:     ssl.ClientCertConn(),
		CertSession:  ssl.ClientCertSess(),
		VerifyResult: binary.BigEndian.Uint32(t.Value[1:5]),
	}
	seen := make(map[proxyproto.PP2Type]bool)
	for _, sub := range ssl.TLV {
		switch sub.Type {
		case proxyproto.PP2_SUBTYPE_SSL_VERSION, proxyproto.PP2_SUBTYPE_SSL_CN, proxyproto.PP2_SUBTYPE_SSL_CIPHER,
			proxyproto.PP2_SUBTYPE_SSL_SIG_ALG, proxyproto.PP2_SUBTYPE_SSL_KEY_ALG, proxyproto.PP2_SUBTYPE_SSL_CLIENT_CERT:
			if seen[sub.Type] {
				return nil, fmt.Errorf("listener: PROXY SSL TLV repeats sub-TLV %#x", byte(sub.Type))
			}
			seen[sub.Type] = true
		}
		switch sub.Type {
		case proxyproto.PP2_SUBTYPE_SSL_VERSION:
			ti.Version = string(sub.Value)
		case proxyproto.PP2_SUBTYPE_SSL_CN:
			ti.CommonName = string(sub.Value)
		case proxyproto.PP2_SUBTYPE_SSL_CIPHER:
			ti.Cipher = string(sub.Value)
		case proxyproto.PP2_SUBTYPE_SSL_SIG_ALG:
			ti.SigAlg = string(sub.Value)
		case proxyproto.PP2_SUBTYPE_SSL_KEY_ALG:
			ti.KeyAlg = string(sub.Value)
		case proxyproto.PP2_SUBTYPE_SSL_CLIENT_CERT:
			cert, err := x509.ParseCertificate(sub.Value)
			if err != nil {
				return nil, fmt.Errorf("listener: PROXY SSL TLV client certificate: %w", err)
			}
			ti.ClientCertificate = cert
		}
	}
	// The CN may become a username: it passes the check certificate
	// identities pass, and a bad one refuses the connection rather than
	// reaching logs and authentication. The value is not echoed. An empty
	// CN is the same as none.
	if ti.CommonName != "" {
		if err := tlsconf.CheckIdentityValue(ti.CommonName); err != nil {
			return nil, fmt.Errorf("listener: PROXY SSL TLV: the client certificate CN %v", err)
		}
	}
	if ti.ClientCertificate != nil && seen[proxyproto.PP2_SUBTYPE_SSL_CN] && ti.ClientCertificate.Subject.CommonName != ti.CommonName {
		return nil, errors.New("listener: PROXY SSL TLV: CN and client certificate disagree")
	}
	return ti, nil
}

func cloneTCPAddr(a *net.TCPAddr) *net.TCPAddr {
	return &net.TCPAddr{IP: append(net.IP(nil), a.IP...), Port: a.Port, Zone: a.Zone}
}
