// Package e2e is Moat's end-to-end message security: payloads are
// encrypted by the publisher and decrypted by the subscribers, so the
// broker in between only ever holds ciphertext.
//
// A message is a COSE_Encrypt0 (RFC 9052) with AES-256-GCM. The full topic
// name, the key group, the key epoch and the sender ID are bound to it as
// external associated data: the same bytes replayed onto another topic, or
// changed in any bit, fail to open. Nonces are not random: they are derived,
// OSCORE style, from a per-sender key and a per-sender sequence number that
// a [SequenceStore] persists in reserved blocks, so a restart never reuses
// one. A protected timestamp, a replay window per sender and a maximum age
// refuse replayed and stale messages. The wire format is specified in
// docs/e2e-format.md, with test vectors in testdata/.
//
// The API follows the shape of filippo.io/age: two one-method interfaces,
// [Sealer] and [Opener], implemented by [GroupSealer] and [GroupOpener]
// (key groups with numbered epochs, keys held in a [Keyring]) and by
// [RawKey] (the seed's raw nonce ‖ ciphertext ‖ tag format with a
// pre-shared key). Errors wrap sentinels ([ErrWrongTopic], [ErrTampered],
// [ErrReplay], [ErrTooOld], [ErrUnknownEpoch], …) that errors.Is tells apart.
//
// Keys reach members as bundles: a key service (package
// github.com/moatmq/moat/e2e/keyservice) seals the epoch keys a member may
// use to that member's HPKE public key ([MemberKey], ML-KEM-768 + X25519
// by default, ML-KEM-768 + P-256 in FIPS 140-3 mode) and signs the result, so a bundle may travel over any
// channel, HTTPS or an MQTT topic, without trusting that channel.
//
// Optional signatures ([Signer], [TrustStore]) add non-repudiation: a
// COSE_Sign1 over the plaintext, the topic and the timestamp, made with the
// sender's certificate key and carried inside the encryption.
package e2e
