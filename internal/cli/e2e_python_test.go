package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// seedPyDriver runs the seed's device code (testutil.SeedAESGCMPython)
// over paho-mqtt: it publishes stdin encrypted, or prints the first
// message it decrypts. The key file path is an argument, the key itself
// never is.
const seedPyDriver = `
import time
import paho.mqtt.client as mqtt

mode, port, keyfile, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = bytes.fromhex(open(keyfile).read().strip())
c = mqtt.Client(client_id="seed-device-" + mode, protocol=mqtt.MQTTv311)
c.connect("127.0.0.1", port)
if mode == "publish":
    c.loop_start()
    info = c.publish(topic, encrypt_payload(sys.stdin.buffer.read(), key), qos=1, retain=True)
    info.wait_for_publish()
    c.disconnect()
    c.loop_stop()
else:
    got = []
    def on_message(client, userdata, msg):
        got.append(decrypt_payload(msg.payload, key))
        client.disconnect()
    c.on_message = on_message
    c.subscribe(topic, qos=1)
    deadline = time.time() + 10
    while not got and time.time() < deadline:
        c.loop(timeout=0.2)
    if not got:
        sys.exit("no message")
    sys.stdout.buffer.write(got[0])
`

// TestE2ESeedPythonRawInterop runs the seed's Python device code against
// moat pub/sub --raw-key through Moat's broker, in both directions.
func TestE2ESeedPythonRawInterop(t *testing.T) {
	t.Parallel()
	const py = "/usr/bin/python3"
	needTool(t, py)
	if err := exec.Command(py, "-c", "import Cryptodome.Cipher.AES, paho.mqtt.client").Run(); err != nil {
		t.Skip("python3-pycryptodome or python3-paho-mqtt not installed (make test installs them)")
	}
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "raw.key")
	e2eRawKeyFile(t, keyFile)
	script := filepath.Join(dir, "seed_device.py")
	if err := os.WriteFile(script, []byte(testutil.SeedAESGCMPython+seedPyDriver), 0o600); err != nil {
		t.Fatal(err)
	}
	python := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, py, append([]string{script}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		cmd.WaitDelay = time.Second
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("python %v: %v\n%s", args, err, stderr.String())
		}
		return string(out)
	}
	conn := []string{"-h", "127.0.0.1", "-p", port}

	t.Run("python device to moat sub --raw-key", func(t *testing.T) {
		python("temperature 21.5 from python", "publish", port, keyFile, "seed/py/temp")
		r := psRun(ctx, "", append([]string{"sub", "--raw-key", keyFile, "-t", "seed/py/temp", "-C", "1", "-W", "10"}, conn...)...)
		if r.code != 0 || r.out != "temperature 21.5 from python\n" {
			t.Fatalf("moat sub: %d %q %s", r.code, r.out, r.err)
		}
		// Without the key the subscriber prints ciphertext, never a plaintext.
		r = psRun(ctx, "", append([]string{"sub", "-t", "seed/py/temp", "-C", "1", "-W", "10", "--json"}, conn...)...)
		if r.code != 0 || strings.Contains(r.out, "temperature") {
			t.Fatalf("the broker delivered a plaintext: %q", r.out)
		}
	})
	t.Run("moat pub --raw-key to python device", func(t *testing.T) {
		r := psRun(ctx, "", append([]string{"pub", "--raw-key", keyFile, "-t", "seed/moat/cmd", "-m", "set-point 19.0 from moat", "-r", "-q", "1"}, conn...)...)
		if r.code != 0 {
			t.Fatalf("moat pub: %d %s", r.code, r.err)
		}
		if got := python("", "subscribe", port, keyFile, "seed/moat/cmd"); got != "set-point 19.0 from moat" {
			t.Fatalf("python decrypted %q", got)
		}
	})
}
