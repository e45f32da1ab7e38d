// Package pki is Moat's built-in certificate authority: a root CA whose key
// is encrypted at rest and an online issuing intermediate, issuance
// profiles for servers and devices, CSR signing with policy checks, an
// inventory of every issued certificate in an embedded bbolt database,
// revocation with a CRL that is regenerated on every change, an OCSP
// responder, EST (RFC 7030) enrollment authorized by one-time bootstrap
// tokens or manufacturer certificates, and the device side of enrollment
// with automatic renewal.
//
// # Directory layout
//
// A CA lives in one directory (the moat command's default is moat-data/ca):
//
//	ca.pem            root certificate: the trust anchor to give to clients and brokers
//	root.key          root key, encrypted with a passphrase (see EncryptKey)
//	root.pass         only when Init generated the passphrase (mode 0600)
//	intermediate.pem  issuing CA certificate
//	intermediate.key  issuing CA key, PKCS#8 PEM, mode 0600 (online: it signs
//	                  certificates, CRLs and the OCSP signer unattended)
//	ocsp.pem/.key     delegated OCSP signing certificate and key (mode 0600)
//	ca.json           settings chosen at Init (profiles, lifetimes, URLs)
//	est.pem/.key      TLS certificate of the EST listener (issued on first use)
//	ca.db             bbolt inventory: certificates, revocations, tokens, CRL
//	crl.pem           the current CRL, rewritten on every regeneration (after
//	                  a rotation also the CRLs of retired intermediates)
//	root-crl.pem      the root's CRL of revoked intermediates (SignRootCRL)
//	retired/          intermediates replaced by RotateIntermediate, with keys
//
// The root key is used only by Init, RotateIntermediate and SignRootCRL;
// between them it can be kept offline. Open needs no passphrase. Init can
// also import an existing root, or an intermediate under an external root
// (InitOptions.ImportRoot, ImportIntermediate).
//
// # Concurrency
//
// A *CA is safe for concurrent use by multiple goroutines. The database is
// opened for each operation and closed after it, under bbolt's file lock,
// so several processes (for example "moat ca serve" and "moat ca revoke")
// can share one directory; a writer waits up to Config.LockTimeout for the
// lock and then fails with ErrDatabaseBusy.
//
// Lock order inside a CA: ocspmu (OCSP signer and response cache) before
// dbmu (this process's database opens) before bbolt's file lock. Database
// transactions never take ocspmu.
package pki
