package config

import (
	"encoding/json"
	"errors"
	"io/fs"
	"testing"
)

// FuzzParseMosquitto feeds arbitrary bytes to the mosquitto.conf parser: it
// must never panic, every problem must be an *Error with a position, and a
// config it accepts must survive Validate, Warnings and JSON encoding.
// include_dir is disabled so that the fuzzer never reads the disk.
func FuzzParseMosquitto(f *testing.F) {
	for _, s := range []string{
		"listener 8883\ncafile /etc/mosquitto/certs/ca-cert.pem\ncertfile /etc/mosquitto/certs/broker-cert.pem\nkeyfile /etc/mosquitto/certs/broker-key.pem\nrequire_certificate true\nuse_identity_as_username true\n",
		"listener 1883 127.0.0.1\nallow_anonymous true\nmax_keepalive 60\n",
		"per_listener_settings true\nallow_anonymous true\nmax_connections 5\nlistener 9001 ::1\nprotocol websockets\nsocket_domain ipv6\n",
		"persistent_client_expiration 1y\nlog_dest file /tmp/x y\nlog_type all\nlog_type none\ninclude_dir /tmp\n",
		"listener 8883\ncertfile a\nkeyfile b\nciphers ECDHE-RSA-AES128-GCM-SHA256:!aNULL\ntls_version tlsv1.1\nciphers_tls1.3 TLS_AES_128_GCM_SHA256\n",
		"",
	} {
		f.Add([]byte(s))
	}
	noDir := func(string) ([]fs.DirEntry, error) { return nil, errors.New("disabled") }
	noFile := func(string) ([]byte, error) { return nil, errors.New("disabled") }
	f.Fuzz(func(t *testing.T, data []byte) {
		c, errs := parseMosquitto("fuzz.conf", data, noDir, noFile)
		for _, err := range errs {
			var e *Error
			if !errors.As(err, &e) || e.File == "" {
				t.Fatalf("problem without position: %v", err)
			}
		}
		if len(errs) > 0 {
			return
		}
		_ = c.validate()
		_ = c.Warnings()
		if _, err := json.Marshal(c); err != nil {
			t.Fatal(err)
		}
	})
}
