package e2e

import (
	"errors"
	"fmt"
)

// Sentinel errors returned (wrapped) by [Opener.Open] and [Sealer.Seal].
// Test for them with errors.Is; the wrapping error says what exactly was
// wrong.
var (
	// ErrMalformed: the message is not a well-formed Moat message.
	ErrMalformed = errors.New("e2e: malformed message")
	// ErrWrongTopic: the message was sealed for another topic, or its key
	// group does not cover the topic it arrived on.
	ErrWrongTopic = errors.New("e2e: message does not belong to this topic")
	// ErrTampered: authentication failed; the message or its bound context
	// (group, epoch, sender) was altered, or the key is wrong.
	ErrTampered = errors.New("e2e: message authentication failed")
	// ErrReplay: the sender's sequence number was already seen or is older
	// than the replay window.
	ErrReplay = errors.New("e2e: replayed message")
	// ErrTooOld: the protected timestamp is older than the maximum age.
	ErrTooOld = errors.New("e2e: message too old")
	// ErrFromFuture: the protected timestamp is further ahead of the local
	// clock than the allowed skew.
	ErrFromFuture = errors.New("e2e: message timestamp is in the future")
	// ErrUnknownEpoch: no key for the message's group and epoch is held,
	// or its grace period has ended.
	ErrUnknownEpoch = errors.New("e2e: unknown key epoch")
	// ErrSuperseded: the message was sealed (or is being sealed) with an
	// epoch that had been superseded for longer than the writers' grace
	// (see EpochKey.SealUntil); the sender must fetch its new bundle.
	ErrSuperseded = errors.New("e2e: key epoch superseded")
	// ErrUnknownSender: the sender is not a writer of the key group.
	ErrUnknownSender = errors.New("e2e: sender is not a writer of the group")
	// ErrNoKey: no key is held to seal for this topic.
	ErrNoKey = errors.New("e2e: no key for topic")
	// ErrBadSignature: the message is signed but the signature does not
	// verify, the signer is not trusted, or does not match the sender.
	ErrBadSignature = errors.New("e2e: bad signature")
	// ErrUnsigned: a signature is required but the message has none.
	ErrUnsigned = errors.New("e2e: message is not signed")
	// ErrBadBundle: a key bundle failed to verify or decrypt.
	ErrBadBundle = errors.New("e2e: bad key bundle")
	// ErrNotApproved: the process runs in FIPS 140-3 mode and the
	// algorithm asked for is not approved there (a member key using
	// X25519).
	ErrNotApproved = errors.New("e2e: algorithm not approved in FIPS 140-3 mode")
)

func wrapf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}
