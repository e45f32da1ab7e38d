// Package store is Moat's durable state: persistent sessions, the messages
// they are owed (in flight and queued), inbound QoS 2 packet identifiers,
// retained messages and pending wills, in one bbolt file.
//
// Every record is sealed with AES-256-GCM under a data key, bound to its
// bucket, key and version; keys are keyed hashes, so the file reveals no
// client ID, topic or payload. The data key is wrapped by a key-encryption
// key: a key file (created beside the store on first start), a key from
// the environment, a passphrase (Argon2id) or a KMS/HSM through
// [keyservice.KEKBackend]. A sealed digest of all records and a commit
// counter kept in a separate file detect altered, moved, deleted, replayed
// and rolled-back records at [Open].
//
// Writes go through [Store.Commit] and [Store.CommitAsync]: one committer
// goroutine applies every waiting request in one transaction and reports
// each only once it is durable as [Config.Sync] says (group commit). A
// batch is written as one sealed record to a commit log (store.wal); with
// SyncAlways it is reported after an fdatasync shared with the batches
// logged meanwhile, with SyncBatch at once (the log is fsynced every
// interval), and the bbolt file is written behind the log at checkpoints
// (wal.go). The
// broker acknowledges a message only after that report. The broker does
// not import this package: it declares the interface it needs, and an
// adapter wired in internal/cli connects the two (docs/design/store.md).
//
// Locks: Store.mu guards the queue of submitted requests and is never held
// during I/O; everything else after Open belongs to the committer
// goroutine, except what the log's syncer owns (the fsyncs of the log and
// the reports).
package store
