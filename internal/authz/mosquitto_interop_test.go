package authz

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/client"
)

// interopACL exercises every part of Mosquitto's acl_file semantics: the
// anonymous section, user sections with read, write, readwrite and deny,
// deny precedence within a list, user lines before patterns, %u and %c
// patterns, deny patterns, and identities with wildcards. Every identity
// may read "marker", which ends each receive round.
const interopACL = `# anonymous clients
topic read public/#
topic deny public/secret/#
topic read marker

user alice
topic readwrite alice/#
topic read shared/+/status
topic write cmd/alice
topic deny alice/private
topic read marker

user bob
topic read #
topic deny alice/#

user ev+il
topic read marker
topic read public/#

user carol
topic read marker

user root
topic readwrite #

pattern readwrite devices/%u/#
pattern read clients/%c/#
pattern deny devices/%u/locked
pattern write up/%c
pattern read %u/inbox
pattern read marker
`

var interopTopics = []string{
	"public/x", "public/secret/y", "alice/x", "alice/private", "alice/private/z", "cmd/alice",
	"shared/a/status", "shared/a/b/status", "devices/alice/t", "devices/alice/locked", "devices/bob/t",
	"devices/carol/t", "devices/evil/t", "clients/alice1/m", "clients/bob1/m", "clients/anon1/m",
	"clients/al/ice/m", "up/alice1", "up/bob1", "up/anon1", "bob/inbox", "alice/inbox",
	"carol/inbox", "other", "$SYS/x", "$share/g/x", "$moat/x",
}

type interopIdentity struct {
	user, clientID string
}

var interopIdentities = []interopIdentity{
	{"", "anon1"}, {"", "c+x"}, {"alice", "alice1"}, {"alice", "al/ice"}, {"bob", "bob1"},
	{"carol", "carol1"}, {"ev+il", "evil1"}, {"root", "root1"},
}

// knownDifference reports the deliberate differences from Mosquitto: a %c
// value with '/' never matches a pattern in Moat (Mosquitto lets client ID
// "al/ice" reach clients/al/ice/...).
func knownDifference(id interopIdentity, topic string) bool {
	return strings.Contains(id.clientID, "/") && strings.HasPrefix(topic, "clients/al/ice/")
}

// TestMosquittoACLFileInterop runs Debian's mosquitto with a password_file
// and an acl_file and checks, for every identity and topic, that the
// publishes mosquitto accepts (MQTT 5 PUBACK) and the messages it delivers
// are exactly those the engine allows.
func TestMosquittoACLFileInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto")
	}
	for _, bin := range []string{"mosquitto", "mosquitto_passwd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	dir := t.TempDir()
	pwfile := filepath.Join(dir, "passwd")
	for i, u := range []string{"alice", "bob", "carol", "ev+il", "root"} {
		args := []string{"-b", pwfile, u, "pw-" + u}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd %s: %v\n%s", u, err, out)
		}
	}
	aclPath := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclPath, []byte(interopACL), 0o600); err != nil {
		t.Fatal(err)
	}
	acl, err := ParseACLFile(aclPath, strings.NewReader(interopACL))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := New(Options{ACL: acl})
	if err != nil {
		t.Fatal(err)
	}
	addr := startMosquitto(t, pwfile, aclPath)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func(id interopIdentity) *client.Client {
		t.Helper()
		cfg := client.Config{Servers: []string{addr}, ClientID: id.clientID, CleanStart: true}
		if id.user != "" {
			cfg.Username, cfg.Password = id.user, client.NewSecret([]byte("pw-"+id.user))
		}
		c, err := client.Dial(ctx, cfg)
		if err != nil {
			t.Fatalf("connect as %q/%q: %v", id.user, id.clientID, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	root := dial(interopIdentity{"root", "root-pub"})

	for _, id := range interopIdentities {
		t.Run(fmt.Sprintf("%s/%s", id.user, id.clientID), func(t *testing.T) {
			subj := &Subject{Username: id.user, Anonymous: id.user == "", ClientID: id.clientID}
			c := dial(id)
			for _, tp := range interopTopics {
				err := c.Publish(ctx, &client.Message{Topic: tp, Payload: []byte("p"), QoS: 1})
				var re *client.ReasonError
				if err != nil && !errors.As(err, &re) {
					t.Fatalf("publish %q: %v", tp, err)
				}
				got := err == nil
				d := policy.Decide(Request{Subject: subj, Action: Publish, Topic: tp, QoS: 1})
				if d.Allow != got && !knownDifference(id, tp) {
					t.Errorf("publish %q: mosquitto accepted=%v, engine %v (%s)", tp, got, d.Allow, d.Reason)
				}
			}

			// Receive: subscribe to "#", let root publish every topic and
			// then the marker; what arrives before the marker is what
			// mosquitto delivered.
			if _, err := c.Subscribe(ctx, client.Subscription{Filter: "#"}); err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			var sent []string
			for _, tp := range interopTopics {
				if strings.HasPrefix(tp, "$") {
					continue
				}
				if err := root.Publish(ctx, &client.Message{Topic: tp, Payload: []byte(tp), QoS: 1}); err != nil {
					t.Fatalf("root publish %q: %v", tp, err)
				}
				sent = append(sent, tp)
			}
			if err := root.Publish(ctx, &client.Message{Topic: "marker", QoS: 1}); err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
		loop:
			for {
				select {
				case m := <-c.Messages():
					if m.Topic == "marker" {
						break loop
					}
					got[m.Topic] = true
				case <-ctx.Done():
					t.Fatalf("no marker from mosquitto; received %v", got)
				}
			}
			for _, tp := range sent {
				d := policy.Decide(Request{Subject: subj, Action: Receive, Topic: tp})
				if d.Allow != got[tp] && !knownDifference(id, tp) {
					t.Errorf("receive %q: mosquitto delivered=%v, engine %v (%s)", tp, got[tp], d.Allow, d.Reason)
				}
			}
		})
	}
}

// startMosquitto starts mosquitto on a loopback port and returns its
// address; it is stopped when the test ends.
func startMosquitto(t *testing.T, pwfile, aclPath string) string {
	t.Helper()
	m := testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npassword_file %s\nacl_file %s\n", ports[0], pwfile, aclPath)
	})
	return m.Addr(0)
}

type mosquittoRun struct {
	running bool
	log     string // the log up to "running" or the exit
	stop    func() // kills mosquitto and waits for it
}

// runMosquitto starts mosquitto with conf and reads its log until it says
// it is running (it listens then) or exits (an invalid configuration).
// When run as root, mosquitto is told to stay root: it would otherwise
// switch to a user that cannot read the test's temporary files.
func runMosquitto(t *testing.T, conf string) mosquittoRun {
	t.Helper()
	if os.Geteuid() == 0 {
		data, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(conf, append([]byte("user root\n"), data...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("mosquitto", "-c", conf)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = pw.Close()
		close(exited)
	}()
	var log strings.Builder
	running := false
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), " running") {
			running = true
			break
		}
	}
	// Keep draining the log so mosquitto never blocks on it; the drain
	// ends when mosquitto exits.
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, pr)
		close(drained)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
		<-drained
	}
	if !running {
		stop()
	}
	return mosquittoRun{running: running, log: log.String(), stop: stop}
}
