// Package scramtest is a scripted MQTT 5 peer that authenticates clients
// with SCRAM, for the tests of the client and the command line. It drives
// a scram.Conversation exactly as the broker must (docs/access-control.md,
// "MQTT 5 enhanced authentication (SCRAM)"); nothing in Debian speaks
// SCRAM over MQTT without plugins, so this stands in for a real broker
// until Moat's does.
package scramtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/packet"
)

// Peer serves one MQTT 5 connection at a time.
type Peer struct {
	Server *scram.Server
	// Tamper, when set, rewrites each server-final-message, as a server
	// that does not know the ServerKey would have to.
	Tamper func([]byte) []byte
	// ReauthOnly applies Tamper to re-authentications only.
	ReauthOnly bool
	// Skip answers CONNECT with CONNACK success at once, as an impostor
	// that accepts anyone would.
	Skip bool
	// Published receives the PUBLISH packets of the client, if not nil
	// (sends block: give a buffered channel).
	Published chan<- *packet.Publish
}

// Code is the reason code the broker sends for a failed exchange.
func Code(err error) packet.ReasonCode {
	switch {
	case errors.Is(err, scram.ErrUnknownMechanism):
		return packet.BadAuthenticationMethod
	case errors.Is(err, authn.ErrUnavailable):
		return packet.ServerUnavailable
	}
	return packet.NotAuthorized
}

// Serve accepts one connection on ln and serves it until the client
// disconnects or fails; the result arrives on the returned channel.
func (p *Peer) Serve(ln net.Listener) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- p.conn(ln) }()
	return errc
}

type session struct {
	p      *Peer
	nc     net.Conn
	r      *packet.Reader
	method string
}

func (s *session) send(pk packet.Packet) error {
	b, err := packet.Append(nil, pk, packet.V5)
	if err == nil {
		_, err = s.nc.Write(b)
	}
	return err
}

func (s *session) withAuth(pr *packet.Properties, data []byte) {
	pr.AuthMethod, pr.AuthData = s.method, data
	pr.Mark(packet.PropAuthMethod)
	pr.Mark(packet.PropAuthData)
}

// run drives one conversation from the client-first-message to the
// server-final-message, which it returns with the authenticated user.
func (s *session) run(conv *scram.Conversation, first []byte, reauth bool) ([]byte, string, error) {
	out, done, res, err := conv.Step(context.Background(), first)
	for err == nil && !done {
		a := &packet.Auth{ReasonCode: packet.ContinueAuthentication}
		s.withAuth(&a.Properties, out)
		if err := s.send(a); err != nil {
			return nil, "", err
		}
		pk, rerr := s.r.ReadPacket()
		if rerr != nil {
			return nil, "", rerr
		}
		in, ok := pk.(*packet.Auth)
		if !ok || in.ReasonCode != packet.ContinueAuthentication || in.Properties.AuthMethod != s.method {
			return nil, "", fmt.Errorf("%w: want AUTH 0x18 %s, got %v", scram.ErrOutOfOrder, s.method, pk)
		}
		out, done, res, err = conv.Step(context.Background(), in.Properties.AuthData)
	}
	if err != nil {
		return nil, "", err
	}
	if s.p.Tamper != nil && (reauth || !s.p.ReauthOnly) {
		out = s.p.Tamper(out)
	}
	return out, res.Username, nil
}

func (p *Peer) conn(ln net.Listener) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	s := &session{p: p, nc: nc, r: packet.NewReader(nc, 0)}
	pk, err := s.r.ReadPacket()
	if err != nil {
		return err
	}
	c, ok := pk.(*packet.Connect)
	if !ok {
		return fmt.Errorf("want CONNECT, got %v", pk)
	}
	s.r.SetVersion(packet.V5)
	s.method = c.Properties.AuthMethod
	ack := &packet.Connack{}
	if p.Skip {
		return s.send(ack)
	}
	if len(c.Password) > 0 {
		ack.ReasonCode = packet.NotAuthorized
		s.send(ack)
		return errors.New("the client sent a password in CONNECT along with SCRAM")
	}
	conv, err := p.Server.Begin(s.method)
	var final []byte
	var user string
	if err == nil {
		final, user, err = s.run(conv, c.Properties.AuthData, false)
	}
	if err != nil {
		ack.ReasonCode = Code(err)
		return s.send(ack)
	}
	s.withAuth(&ack.Properties, final)
	if err := s.send(ack); err != nil {
		return err
	}
	for {
		pk, err := s.r.ReadPacket()
		if err != nil {
			return err
		}
		switch pk := pk.(type) {
		case *packet.Disconnect:
			return nil
		case *packet.Publish:
			if p.Published != nil {
				p.Published <- pk
			}
			if pk.QoS == 1 {
				if err := s.send(&packet.Puback{PacketID: pk.PacketID}); err != nil {
					return err
				}
			}
		case *packet.Auth:
			if pk.ReasonCode != packet.ReAuthenticate {
				return fmt.Errorf("unexpected %v", pk)
			}
			var final []byte
			err := fmt.Errorf("%w: re-authentication with method %q", scram.ErrUnknownMechanism, pk.Properties.AuthMethod)
			if pk.Properties.AuthMethod == s.method {
				var conv *scram.Conversation
				if conv, err = p.Server.BeginReauth(s.method, user); err == nil {
					final, _, err = s.run(conv, pk.Properties.AuthData, true)
				}
			}
			if err != nil {
				return s.send(&packet.Disconnect{ReasonCode: Code(err)})
			}
			a := &packet.Auth{ReasonCode: packet.Success}
			s.withAuth(&a.Properties, final)
			if err := s.send(a); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected %v", pk)
		}
	}
}
