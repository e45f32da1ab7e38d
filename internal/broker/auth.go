package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// MQTT 5 enhanced authentication (§4.12): a CONNECT with an
// Authentication Method runs an exchange of AUTH packets before CONNACK,
// and a connected client may run a new exchange (re-authentication) with
// AUTH 0x19 while its other packets keep flowing. The broker drives the
// exchange; what the data means (SCRAM messages, a token) is the
// EnhancedAuthenticator's. See docs/access-control.md.

// EnhancedAuthenticator starts enhanced authentication exchanges.
// Implementations must be safe for concurrent use.
type EnhancedAuthenticator interface {
	// Begin starts the exchange of c with method: of a CONNECT when
	// reauth is false (c.Username is empty, c.ClaimedUsername the CONNECT
	// User Name), of a re-authentication when it is true (c.Username is
	// the connection's identity, which the exchange must not change). An
	// error wrapping ErrBadAuthMethod means the listener does not offer
	// method (CONNACK or DISCONNECT 0x8C); other errors refuse as 0x87.
	Begin(c *Client, method string, reauth bool) (AuthExchange, error)
}

// AuthExchange is one exchange. The broker calls Step from one goroutine
// at a time, first with the Authentication Data of CONNECT (or AUTH 0x19),
// then with that of each AUTH 0x18 the client sends, and drops the
// exchange after done or an error.
type AuthExchange interface {
	// Step takes the client's data and returns the answer: with err nil
	// and done false, out goes to the client in AUTH 0x18; with done
	// true, res.Allow must be set and res.Username names the identity
	// (res.Expires, when not zero, when the authentication stops
	// holding), and out goes in CONNACK 0x00 or AUTH 0x00. With err not
	// nil the authentication failed: res.Code is the reason code (zero:
	// 0x87 Not authorized) and res.Reason, for the log only, why; the
	// client learns neither.
	Step(ctx context.Context, data []byte) (out []byte, done bool, res AuthResult, err error)
}

// ErrBadAuthMethod is wrapped by EnhancedAuthenticator.Begin errors for a
// method that is not offered.
var ErrBadAuthMethod = errors.New("broker: authentication method not offered")

// maxAuthRounds bounds the AUTH packets of one exchange (SCRAM needs two
// steps); the connect timeout bounds its time before CONNACK.
const maxAuthRounds = 8

// authFailed is what a client is told of any failed exchange: the cases
// (unknown user, wrong proof) must not be told apart on the wire.
const authFailed = "authentication failed"

// authPacket builds an AUTH packet of method with data.
func authPacket(code packet.ReasonCode, method string, data []byte) *packet.Auth {
	a := &packet.Auth{ReasonCode: code}
	a.Properties.AuthMethod = method
	a.Properties.Mark(packet.PropAuthMethod)
	if data != nil {
		a.Properties.AuthData = data
		a.Properties.Mark(packet.PropAuthData)
	}
	return a
}

// enhancedConnect runs the enhanced authentication of a CONNECT carrying
// an Authentication Method, under the connect deadline, and sends the
// refusal itself.
func (c *conn) enhancedConnect(ctx context.Context, pkt *packet.Connect, st *connectState) bool {
	s := c.srv
	method := st.authMethod
	ea := s.cfg.EnhancedAuthenticator
	if ea == nil {
		return c.refuse(pkt, packet.BadAuthenticationMethod, "enhanced authentication is not offered")
	}
	x, err := ea.Begin(&c.client, method, false)
	if err != nil {
		c.log.Info("broker: authentication method refused", "method", clipString(method), "err", err)
		if errors.Is(err, ErrBadAuthMethod) {
			return c.refuse(pkt, packet.BadAuthenticationMethod, "authentication method not supported")
		}
		return c.refuse(pkt, packet.NotAuthorized, authFailed)
	}
	if pkt.PasswordFlag {
		// The client would use its password twice; it is misconfigured,
		// and the password is not looked at.
		return c.refuse(pkt, packet.NotAuthorized, "a Password must not be sent with an Authentication Method")
	}
	data := pkt.Properties.AuthData
	for round := 0; ; round++ {
		out, done, res, err := x.Step(ctx, data)
		if err != nil {
			c.log.Info("broker: enhanced authentication failed", "method", clipString(method),
				"claimed_username", c.client.ClaimedUsername, "reason", res.Reason, "err", err)
			// The defense counts a failed exchange like a wrong password:
			// guessing through SCRAM must trigger the same bans.
			c.obs.AuthFailed(&c.client, "enhanced authentication failed: "+res.Reason)
			return c.refuse(pkt, failCode(res), authFailed)
		}
		if done {
			switch {
			case !res.Allow || res.Username == "":
				c.log.Error("broker: enhanced authenticator finished without an identity; refused", "method", clipString(method))
				return c.refuse(pkt, packet.NotAuthorized, authFailed)
			case pkt.UsernameFlag && pkt.Username != res.Username:
				return c.refuse(pkt, packet.NotAuthorized, "the User Name is not the authenticated identity")
			}
			c.client.Username = res.Username
			c.client.Attributes = res.Attributes
			c.client.Groups, c.client.Publish, c.client.Subscribe = res.Groups, res.Publish, res.Subscribe
			c.client.AuthBackend, c.client.AuthExpires = res.Backend, res.Expires
			c.authMethod = method
			st.authData = out
			st.authExpires = res.Expires
			c.log.Debug("broker: enhanced authentication succeeded", "method", clipString(method), "username", res.Username, "reason", res.Reason)
			return true
		}
		if round+1 >= maxAuthRounds {
			return c.refuse(pkt, packet.NotAuthorized, authFailed)
		}
		c.writeDirect(authPacket(packet.ContinueAuthentication, method, out), packet.V5)
		c.releaseBody()
		c.in.r.SetVersion(packet.V5)
		p, err := c.in.r.ReadPacket()
		if err != nil {
			var pe *packet.Error
			if errors.As(err, &pe) {
				s.stats.protocolErrors.Add(1)
				return c.refuse(pkt, pe.Code, pe.Reason)
			}
			c.log.Info("broker: connection closed during enhanced authentication", "method", clipString(method), "err", err)
			return false
		}
		a, ok := p.(*packet.Auth)
		switch {
		case !ok:
			s.stats.protocolErrors.Add(1)
			return c.refuse(pkt, packet.ProtocolError, fmt.Sprintf("%s during enhanced authentication", p.Type()))
		case a.ReasonCode != packet.ContinueAuthentication:
			s.stats.protocolErrors.Add(1)
			return c.refuse(pkt, packet.ProtocolError, "AUTH during CONNECT must continue the authentication")
		case a.Properties.AuthMethod != method:
			// The method is fixed for the whole exchange.
			s.stats.protocolErrors.Add(1)
			return c.refuse(pkt, packet.ProtocolError, "AUTH with another authentication method")
		}
		data = a.Properties.AuthData
	}
}

// failCode is the reason code of a failed exchange.
func failCode(res AuthResult) packet.ReasonCode {
	if res.Code == 0 {
		return packet.NotAuthorized
	}
	return res.Code
}

// handleAuth handles AUTH from a connected client: re-authentication
// [MQTT-4.12.1]. The exchange runs on the reader between other packets.
func (c *conn) handleAuth(p *packet.Auth) bool {
	s := c.srv
	if c.authMethod == "" {
		// [MQTT-3.15.2-1]: no enhanced authentication at CONNECT.
		return c.protocolError(packet.ProtocolError, "AUTH without enhanced authentication")
	}
	if p.Properties.AuthMethod != c.authMethod {
		// [MQTT-4.12.1-1]. 0x8C Bad authentication method is not a
		// DISCONNECT reason code (§3.14.2.1): this is a protocol error.
		return c.protocolError(packet.ProtocolError, "AUTH with another authentication method than CONNECT")
	}
	switch p.ReasonCode {
	case packet.ReAuthenticate:
		if c.reauth != nil {
			return c.protocolError(packet.ProtocolError, "re-authentication started while one is in progress")
		}
		x, err := s.cfg.EnhancedAuthenticator.Begin(&c.client, c.authMethod, true)
		if err != nil {
			// The method was accepted at CONNECT: the configuration
			// changed since. (0x8C is not a DISCONNECT reason code.)
			c.log.Info("broker: re-authentication refused", "err", err)
			c.kill(packet.NotAuthorized, "re-authentication failed")
			return false
		}
		c.reauth, c.reauthRounds = x, 0
	case packet.ContinueAuthentication:
		if c.reauth == nil {
			return c.protocolError(packet.ProtocolError, "AUTH 0x18 without a re-authentication in progress")
		}
	default:
		return c.protocolError(packet.ProtocolError, fmt.Sprintf("AUTH with reason code %s from a client", p.ReasonCode))
	}
	c.reauthRounds++
	ctx, cancel := context.WithTimeout(s.ctx, s.connectTimeout())
	out, done, res, err := c.reauth.Step(ctx, p.Properties.AuthData)
	cancel()
	if err != nil {
		c.reauth = nil
		c.log.Warn("broker: re-authentication failed; disconnecting", "method", clipString(c.authMethod),
			"username", c.client.Username, "reason", res.Reason, "err", err)
		c.kill(failCode(res), "re-authentication failed")
		return false
	}
	if !done {
		if c.reauthRounds >= maxAuthRounds {
			c.reauth = nil
			c.kill(packet.NotAuthorized, "re-authentication failed")
			return false
		}
		c.send(authPacket(packet.ContinueAuthentication, c.authMethod, out))
		return true
	}
	c.reauth = nil
	if !res.Allow || res.Username != c.client.Username {
		c.log.Warn("broker: re-authentication as another identity; disconnecting", "username", c.client.Username,
			"new_username", clipString(res.Username))
		c.kill(packet.NotAuthorized, "re-authentication failed")
		return false
	}
	if !sameGrants(c.client.Grants(), &res) {
		// The new groups and grants apply at once: what they no longer
		// allow is taken away now, what they add is allowed from now on.
		c.regrant(&res)
	}
	c.armExpiry(res.Expires)
	c.log.Info("broker: client re-authenticated", "method", clipString(c.authMethod), "username", c.client.Username,
		"expires", res.Expires, "reason", res.Reason)
	c.send(authPacket(packet.Success, c.authMethod, out))
	return true
}

// armExpiry (re)arms the timer that ends the connection when its
// authentication stops holding (a token's exp); a zero time stops it. A
// client that connected with an Authentication Method gets ReauthGrace
// more to re-authenticate with a fresh credential (MQTT has no packet to
// ask it to: it must watch its token). Safe from any goroutine.
func (c *conn) armExpiry(exp time.Time) {
	s := c.srv
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.expTimer != nil {
		c.expTimer.Stop()
		c.expTimer = nil
	}
	c.expGen++
	if exp.IsZero() || c.expStopped {
		return
	}
	d := exp.Sub(s.cfg.Now())
	if c.authMethod != "" {
		d += s.limits().ReauthGrace
	}
	gen := c.expGen
	c.expTimer = s.afterFunc(max(d, 0), func() { c.expired(gen, exp) })
}

// expired ends a connection whose authentication expired, unless the
// timer was re-armed or stopped meanwhile.
func (c *conn) expired(gen uint64, exp time.Time) {
	c.authMu.Lock()
	current := gen == c.expGen && !c.expStopped
	c.authMu.Unlock()
	if !current {
		return
	}
	c.log.Warn("broker: authentication expired; disconnecting", "username", c.client.Username, "expired", exp,
		"could_reauthenticate", c.authMethod != "")
	c.kill(packet.NotAuthorized, "token expired")
}

// stopExpiry stops the expiry timer for good; finish calls it.
func (c *conn) stopExpiry() {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	c.expStopped = true
	if c.expTimer != nil {
		c.expTimer.Stop()
		c.expTimer = nil
	}
}

// clipString shortens a peer-controlled string for a log line.
func clipString(s string) string {
	const maxLen = 128
	if len(s) > maxLen {
		return s[:maxLen] + "…"
	}
	return s
}

// sameGrants reports whether a re-authentication's result r carries the
// groups, grants and backend g the connection holds.
func sameGrants(g Grants, r *AuthResult) bool {
	return slices.Equal(g.Groups, r.Groups) && slices.Equal(g.Publish, r.Publish) &&
		slices.Equal(g.Subscribe, r.Subscribe) && g.Backend == r.Backend
}
