package cli

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/tlsconf"
)

// certAuthenticator authenticates clients by their verified TLS
// certificate, per listener: the identity mapping of the listener names the
// username (use_identity_as_username and friends) and may replace or bind
// the client ID. Clients it cannot decide on are left to the listener's
// anonymous policy, after the listener's authentication chain
// (accessAuthenticator).
type certAuthenticator struct {
	mappings map[string]tlsconf.IdentityMapping // by listener name; read-only after start
	// proxy maps listener names to the identity source of PROXY-reported
	// client certificates (proxy_protocol.username_from).
	proxy map[string]tlsconf.IdentitySource
}

func (a *certAuthenticator) Authenticate(_ context.Context, req *broker.ConnectRequest) broker.AuthResult {
	if src, ok := a.proxy[req.Client.Listener]; ok && len(req.Client.PeerCertificates()) == 0 {
		if id, ok := proxyIdentity(req.Client.Conn, src); ok {
			return broker.AuthResult{Allow: true, Username: id, Reason: "client certificate verified by the load balancer"}
		}
		return broker.AuthResult{Code: packet.NotAuthorized, Reason: "this listener identifies clients by the certificate the load balancer verified, and it reported none"}
	}
	m, ok := a.mappings[req.Client.Listener]
	if !ok || (m.Username == tlsconf.IdentityNone && m.ClientID == tlsconf.IdentityNone && m.BindClientID == "") {
		return broker.AuthResult{NoOpinion: true}
	}
	certs := req.Client.PeerCertificates()
	if len(certs) == 0 {
		if m.BindClientID != "" {
			// bind_client_id reserves client IDs for the certificates
			// that match the binding, and any client ID may match some
			// certificate: without one, no client ID can be checked.
			return broker.AuthResult{Code: packet.ClientIDNotValid, Reason: "this listener binds client IDs to certificates and none was presented"}
		}
		if m.Username != tlsconf.IdentityNone {
			// The listener takes identities from certificates: without
			// one there is nobody to authenticate (as Mosquitto refuses a
			// client without a certificate on such a listener).
			return broker.AuthResult{Code: packet.NotAuthorized, Reason: "this listener identifies clients by certificate and none was presented"}
		}
		return broker.AuthResult{NoOpinion: true}
	}
	mapped, err := m.Apply(certs[0], req.Connect.Username, req.Client.ClientID)
	if err != nil {
		code := packet.NotAuthorized
		if errors.Is(err, tlsconf.ErrClientIDMismatch) {
			code = packet.ClientIDNotValid
		}
		return broker.AuthResult{Code: code, Reason: err.Error()}
	}
	res := broker.AuthResult{Allow: mapped.UsernameFromCert, NoOpinion: !mapped.UsernameFromCert, Reason: "client certificate"}
	res.Username = mapped.Username
	// The binding was checked above: this certificate owns the client ID,
	// and a session another identity holds under it is ended.
	res.ClientIDBound = m.BindClientID != ""
	if mapped.ClientID != req.Client.ClientID {
		res.ClientID = mapped.ClientID
	}
	// No Attributes: they would be kept for the connection's lifetime, and
	// an Authorizer that needs more of the certificate than the mapped
	// identity reads it from Client.PeerCertificates.
	return res
}

// proxyIdentity returns the client certificate identity a trusted
// TLS-terminating balancer reported in the PROXY v2 header, when the
// listener is configured to use it.
func proxyIdentity(conn net.Conn, src tlsconf.IdentitySource) (string, bool) {
	if conn == nil || src == tlsconf.IdentityNone {
		return "", false
	}
	pt := listener.Info(conn).ProxyTLS
	if pt == nil || !pt.Verified() {
		return "", false
	}
	if pt.ClientCertificate != nil {
		id, err := tlsconf.Identity(pt.ClientCertificate, src)
		return id, err == nil && id != ""
	}
	if src == tlsconf.IdentityCN && tlsconf.CheckIdentityValue(pt.CommonName) == nil {
		return pt.CommonName, true
	}
	return "", false
}

// accessAuthenticator is the broker's Authenticator: the certificate
// identity of the listener first (certAuthenticator), then the listener's
// authentication chain (password files, LDAP, JWT, introspection). A chain
// backend that cannot answer refuses the client as "server unavailable"
// (fail closed). Every decision is logged with its reason; passwords
// never are.
type accessAuthenticator struct {
	cert   *certAuthenticator
	chains map[string]*authn.Chain // by listener name; read-only after start
	log    *slog.Logger
}

func (a *accessAuthenticator) Authenticate(ctx context.Context, req *broker.ConnectRequest) broker.AuthResult {
	res := a.cert.Authenticate(ctx, req)
	chain := a.chains[req.Client.Listener]
	if res.Allow || !res.NoOpinion || chain == nil || len(chain.Backends) == 0 {
		a.logDecision(req, res, "certificate")
		return res
	}
	areq := &authn.Request{
		Listener:     req.Client.Listener,
		ClientID:     req.Client.ClientID,
		Username:     req.Connect.Username,
		Password:     authn.NewPassword(req.Connect.Password),
		HasPassword:  req.Connect.PasswordFlag,
		Chain:        req.Client.PeerCertificates(),
		CertIdentity: res.Username,
	}
	if ap, ok := addrPort(req.Client.Remote); ok {
		areq.Remote = ap
	}
	r, err := chain.Authenticate(ctx, areq)
	out := res // keeps a certificate-bound or certificate-derived client ID
	switch {
	case err != nil:
		out = broker.AuthResult{Code: packet.ServerUnavailable, Reason: r.Reason}
		a.log.Error("auth: backend unavailable; client refused (fail closed)", "listener", req.Client.Listener,
			"client_id", req.Client.ClientID, "username", clipLog(req.Connect.Username), "backend", r.Backend, "err", err)
		return out
	case r.Verdict == authn.Allow:
		out.Allow, out.NoOpinion = true, false
		out.Username = cmpOr(r.Username, req.Connect.Username)
		out.Reason = r.Reason
		out.Groups, out.Publish, out.Subscribe = r.Groups, r.Publish, r.Subscribe
		out.Backend, out.Expires = r.Backend, r.Expires
	case r.Verdict == authn.Deny:
		out = broker.AuthResult{Code: packet.BadUsernameOrPassword, Reason: r.Reason}
	default:
		// No backend knows the client: the listener's anonymous policy
		// decides (Mosquitto: a client without a username).
		out.Reason = r.Reason
	}
	a.logDecision(req, out, r.Backend)
	return out
}

// logDecision logs an authentication decision with its reason.
func (a *accessAuthenticator) logDecision(req *broker.ConnectRequest, res broker.AuthResult, backend string) {
	verdict := "refused"
	switch {
	case res.Allow:
		verdict = "admitted"
	case res.NoOpinion:
		verdict = "left to the anonymous policy"
	}
	a.log.Info("auth: client "+verdict, "listener", req.Client.Listener, "client_id", clipLog(req.Client.ClientID),
		"username", clipLog(cmpOr(res.Username, req.Connect.Username)), "backend", backend, "reason", res.Reason)
}

// addrPort converts a peer address to netip form.
func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch v := a.(type) {
	case nil:
		return netip.AddrPort{}, false
	case *net.TCPAddr:
		return v.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}
