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
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	dir := t.TempDir()
	port := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`listener %d 127.0.0.1
socket_domain ipv4
allow_anonymous true
`, ports[0]))
		return []string{"-c", "mosquitto.conf"}
	}).port(0)
	mosquittoRoundTrip(t, port, []string{"-V", "mqttv5"}, "domain/v4", "hello", 1)
}
