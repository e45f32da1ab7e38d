// Package bench is Moat's MQTT load generator, the engine behind
// `moat bench`. It drives a broker with many simulated clients built
// directly on the internal/packet codec (MQTT 3.1.1, one reader goroutine
// per connection, batched writes, no allocation per message on the hot
// path) and measures:
//
//   - connection storms: success rate, connections per second, TCP+TLS
//     handshake and CONNACK latency, TLS session resumption, post-quantum
//     or classical key exchange;
//   - publish/subscribe shapes (point-to-point, fan-in, fan-out, shared
//     subscriptions, publish only, subscribe only): messages sent,
//     delivered and lost, and end-to-end latency from a timestamp carried
//     in every payload, in a log-linear histogram;
//   - the broker's CPU and resident memory, sampled from /proc when its
//     process ID is known.
//
// Results come as a [Result] that renders as a text table, JSON and a
// self-contained HTML report with inline SVG charts; [Compare] turns the
// results of two brokers into a markdown table of ratios.
//
// The package also holds the helpers of the side-by-side benchmark
// (scripts/bench.sh): a test PKI generator ([WritePKI]), a per-client
// certificate issuer ([Issuer]) and a null forwarder ([NullForwarder]), an
// MQTT relay without broker logic that serves as the ceiling.
//
// Every load loop is bounded in count and time; connections go to the
// configured address only (127.0.0.0/8 in the scripts).
package bench
