package client

import (
	"context"

	"github.com/moatmq/moat/internal/packet"
)

type opKind byte

const (
	opPublish opKind = iota + 1
	opSubscribe
	opUnsubscribe
	opReauth
)

// Token tracks an asynchronous operation (PublishAsync). Its methods are
// safe for concurrent use.
type Token struct {
	kind opKind
	id   uint16
	seq  uint64 // order of publishes, for resending
	msg  *Message
	rel  bool // QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP

	subs    []Subscription // SUBSCRIBE
	filters []string       // UNSUBSCRIBE
	resub   bool           // automatic resubscription: nobody waits
	codes   []ReasonCode

	done     chan struct{}
	err      error
	finished bool // guarded by the Client's lock
}

// completed is the token returned for QoS 0 publishes that were handed to
// the writer: it is shared and always done.
var completed = func() *Token {
	t := &Token{done: make(chan struct{}), finished: true}
	close(t.done)
	return t
}()

func failed(err error) *Token {
	t := &Token{done: make(chan struct{}), err: err, finished: true}
	close(t.done)
	return t
}

func newToken(k opKind) *Token { return &Token{kind: k, done: make(chan struct{})} }

// finish completes t; the caller holds the Client's lock.
func (t *Token) finish(err error) {
	if t.finished {
		return
	}
	t.finished = true
	t.err = err
	close(t.done)
}

// Done returns a channel closed when the operation has completed.
func (t *Token) Done() <-chan struct{} { return t.done }

// Err returns the operation's result once Done is closed (nil before).
func (t *Token) Err() error {
	select {
	case <-t.done:
		return t.err
	default:
		return nil
	}
}

// Wait waits for the operation to complete and returns its result, or
// ctx.Err() if ctx ends first (the operation itself goes on: a message
// already handed to the server cannot be recalled).
func (t *Token) Wait(ctx context.Context) error {
	select {
	case <-t.done:
		return t.err
	default:
	}
	select {
	case <-t.done:
		return t.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reasonErr builds the error for a failure reason code, nil for success.
func reasonErr(op string, code ReasonCode, props *packet.Properties, topic string) error {
	if !code.IsError() {
		return nil
	}
	return &ReasonError{Op: op, Code: code, Reason: props.ReasonString, Topic: topic}
}
