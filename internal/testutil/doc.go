// Package testutil holds the helpers every package's tests share: polling
// instead of sleeping (CheckFor, WaitFor), the goroutine-leak check
// (VerifyTestMain, CheckNoLeaks), starting external peers such as
// Mosquitto or slapd on ports that are retried when another process takes
// them first (StartPeer), and test fixtures that several packages use.
// The throw-away PKI lives in the sub-package testpki.
//
// It is for tests only and imports only the standard library and goleak.
// See docs/design/testing.md for the rules these helpers carry.
package testutil
