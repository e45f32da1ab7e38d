// Package client is Moat's MQTT client: MQTT 3.1, 3.1.1 and 5.0 over TCP,
// TLS (with client certificates), WebSocket and secure WebSocket, directly
// or through a SOCKS5 proxy.
//
// A Client is created with Dial and stays usable until Close: with
// Config.Reconnect enabled it reconnects with exponential backoff and
// jitter, resumes the session, and resends unacknowledged QoS 1 and 2
// messages with the DUP flag [MQTT-4.4.0-1]. Every method is safe for
// concurrent use and takes a context that bounds how long it waits.
//
// Each connection has one reader and one writer goroutine. Packets are
// encoded straight into a write buffer that the writer flushes in batches,
// so that many small publishes cost one system call; Publish at QoS 0
// allocates nothing on the client side and PublishAsync at QoS 1 or 2 one
// Token. The in-flight window is capped by the server's Receive Maximum;
// publishers wait (bounded by their context) when it is full.
//
// Received messages go to Config.OnMessage, called in order on one
// delivery goroutine, or, when OnMessage is nil, to the channel returned by
// Messages. QoS 1 and 2 messages are acknowledged after the handler
// returns, so a crash while handling a message leads to redelivery rather
// than loss.
//
// MQTT types (reason codes, properties, subscriptions, will) are aliases of
// Moat's codec types, so they can be used from other modules through this
// package.
package client
