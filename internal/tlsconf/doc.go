// Package tlsconf is Moat's transport security layer: a hardened TLS server
// policy (NIST SP 800-52 Rev. 2 defaults, hybrid post-quantum key exchange
// first), client certificate verification with CRL and OCSP, certificate
// identity mapping to MQTT usernames and client IDs, hot reload of
// certificates, keys, CA bundles and CRLs without dropping connections, SNI,
// OCSP stapling, rotating session ticket keys, and live revocation of
// connected sessions.
//
// A listener builds one Manager with New from a ListenerConfig whose zero
// value (plus a certificate) is the secure default, serves TLS with
// Manager.TLSConfig, calls Manager.Watch for every authenticated connection
// so a revoked or expired certificate ends the session, and calls
// Manager.Close on shutdown. The translation of mosquitto.conf TLS keys lives
// in ParseTLSVersion, ParseOpenSSLCiphers, ParseTLS13Ciphers and
// ParseIdentitySource.
//
// The design (reload, live revocation, OCSP caching, lock order) is written
// in docs/design/tls.md.
package tlsconf
