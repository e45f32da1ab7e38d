package cli

import (
	"fmt"
	"path/filepath"
	"testing"
)

// TestServeSocketDomain checks that mosquitto.conf's socket_domain reaches
// the listener: an ipv4 listener serves Mosquitto's clients on 127.0.0.1.
// (The listener package tests that ipv4 and ipv6 bind one IP version
// only.)
func TestServeSocketDomain(t *testing.T) {
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	dir := t.TempDir()
	port := freePort(t)
	writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`listener %d 127.0.0.1
socket_domain ipv4
allow_anonymous true
`, port))
	startMoat(t, dir, []int{port}, "-c", "mosquitto.conf")
	mosquittoRoundTrip(t, port, []string{"-V", "mqttv5"}, "domain/v4", "hello", 1)
}
