package client

import (
	"context"
	"sync"

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

	subs     []Subscription // SUBSCRIBE
	subProps Properties     // SUBSCRIBE properties
	filters  []string       // UNSUBSCRIBE
	resub    bool           // automatic resubscription: nobody waits
	codes    []ReasonCode

	mu       sync.Mutex
	done     chan struct{} // made on demand by Done: most tokens are finished before anyone waits
	err      error
	finished bool
}

// closedChan is returned by Done for tokens finished before Done was called.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// completed is the token returned for QoS 0 publishes that were handed to
// the writer: it is shared and always done.
var completed = &Token{finished: true}

func failed(err error) *Token { return &Token{err: err, finished: true} }

func newToken(k opKind) *Token { return &Token{kind: k} }

// finish completes t with err; later calls do nothing.
func (t *Token) finish(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished {
		return
	}
	t.finished = true
	t.err = err
	if t.done != nil {
		close(t.done)
	}
}

// Done returns a channel closed when the operation has completed.
func (t *Token) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done == nil {
		if t.finished {
			return closedChan
		}
		t.done = make(chan struct{})
	}
	return t.done
}

// Err returns the operation's result once it has completed (nil before).
func (t *Token) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// result reports whether t has finished, and its error.
func (t *Token) result() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.finished, t.err
}

// Wait waits for the operation to complete and returns its result, or
// ctx.Err() if ctx ends first (the operation itself goes on: a message
// already handed to the server cannot be recalled).
func (t *Token) Wait(ctx context.Context) error {
	if done, err := t.result(); done {
		return err
	}
	select {
	case <-t.Done():
		return t.Err()
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
