package cli

import (
	"context"
	"errors"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/tlsconf"
)

// certAuthenticator authenticates clients by their verified TLS
// certificate, per listener: the identity mapping of the listener names the
// username (use_identity_as_username and friends) and may replace or bind
// the client ID. Clients it cannot decide on are left to the listener's
// anonymous policy; password and token backends plug in here later.
type certAuthenticator struct {
	mappings map[string]tlsconf.IdentityMapping // by listener name; read-only after start
}

func (a *certAuthenticator) Authenticate(_ context.Context, req *broker.ConnectRequest) broker.AuthResult {
	m, ok := a.mappings[req.Client.Listener]
	if !ok || (m.Username == tlsconf.IdentityNone && m.ClientID == tlsconf.IdentityNone && m.BindClientID == "") {
		return broker.AuthResult{NoOpinion: true}
	}
	certs := req.Client.PeerCertificates()
	if len(certs) == 0 {
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
	if mapped.ClientID != req.Client.ClientID {
		res.ClientID = mapped.ClientID
	}
	res.Attributes = map[string]string{"cert.subject": certs[0].Subject.String(), "cert.serial": certs[0].SerialNumber.String()}
	return res
}
