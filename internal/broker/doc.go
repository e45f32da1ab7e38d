// Package broker is Moat's MQTT server engine: connections, sessions,
// subscriptions, routing, retained and will messages, QoS flows and limits,
// for MQTT 3.1, 3.1.1 and 5.0 clients at once.
//
// A Server serves any net.Listener (plain TCP, TLS, WebSocket: see
// internal/listener) with Serve and stops with Shutdown. It sees
// authentication, authorization, live certificate revocation and storage only
// through the small interfaces declared in this package (Authenticator,
// Authorizer, CertWatcher, RetainedStore), which internal/cli wires up.
//
// # Concurrency model
//
// Every goroutine is started through the server's tracker. A connection
// uses one goroutine for the TLS handshake and CONNECT, then a fresh
// reader goroutine that decodes packets and handles them in order (the
// handshake's large stack is not kept for the connection's lifetime).
// Outbound packets go to the connection's queue; a writer goroutine exists
// only while the queue is non-empty: it encodes every pending packet into
// one buffer, writes it with a single call (batched flushes) and exits when
// the queue is empty. Packets queued while the reader handles a packet
// (acknowledgements, the next in-flight messages) are written by the reader
// itself once its input is drained, saving a goroutine hand-off per
// exchange. A connection that has sent nothing for a second (or nothing
// since CONNECT) gives its read buffer back to a pool and is watched by a
// fresh goroutine that waits for the socket to become readable, a short
// call chain that fits the smallest stack (input.go). An idle connection
// therefore costs one parked goroutine with a 2 KiB stack and no buffer of
// its own beyond those of crypto/tls.
//
// A PUBLISH is routed on the publisher's reader goroutine: the subscription
// index is matched without a global lock, and each matching session is
// locked only long enough to assign a packet identifier and append to its
// connection's queue. The lock order is written in docs/design/locking.md.
//
// A panic while handling one connection is recovered, counted and logged;
// the connection is closed and the server goes on.
package broker
