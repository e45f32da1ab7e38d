package cli

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// lossACL is the acl_file of the loss-of-access test.
const lossACL = `user alice
topic read shared/#
topic read alice/#

user bob
topic read shared/#

user carol
topic write shared/#
topic write alice/#
topic write devices/#

pattern read devices/%c/#
`

// TestSecurityServeLossOfAccess: rights removed while clients are
// connected take effect on them at once (the attack: keep a session open
// and keep reading after the operator revoked access, as in EMQX #10192 and
// #10433). An edited acl_file removes the subscription alice may no longer
// make while her permitted one keeps delivering; a password removed from
// the password file disconnects bob (MQTT 5 DISCONNECT 0x87) and he cannot
// come back. A subscription that can never be read is refused in SUBACK
// (0x87, MQTT 3.1.1 0x80).
func TestSecurityServeLossOfAccess(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub")
	dir := t.TempDir()
	pw, acl := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl")
	makePasswd(t, pw, "alice", "bob", "carol")
	writeFile(t, acl, lossACL)
	m := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\nacl_file %s\n", ports[0], pw, acl))
		return []string{"-c", "mosquitto.conf", "--data", filepath.Join(dir, "data")}
	})
	port := m.port(0)

	// Never readable: refused in SUBACK, for both protocol versions.
	for _, v := range []string{"5", "311"} {
		out, err := run(t, 15*time.Second, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-V", v,
			"-u", "bob", "-P", "bob-pw", "-i", "bob-never", "-t", "alice/#", "-C", "1", "-W", "5")
		if !strings.Contains(out, "denied") {
			t.Errorf("MQTT %s: subscription to a never readable filter: %v %q, want a refusal in SUBACK", v, err, out)
		}
	}

	// %c injection: a client ID of "+" or "#" would turn the pattern
	// devices/%c/# into a wildcard over every device; the pattern does
	// not match such an identity, so nothing is readable.
	for _, id := range []string{"+", "#"} {
		out, _ := run(t, 15*time.Second, "mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-V", "5",
			"-u", "bob", "-P", "bob-pw", "-i", id, "-t", "devices/+/#", "-C", "1", "-W", "5")
		if !strings.Contains(out, "denied") {
			t.Errorf("client ID %q: subscription to devices/+/#: %q, want a refusal", id, out)
		}
	}

	alice := startSub(t, port, "alice", "shared/#", "-V", "5", "-t", "alice/#")
	bob := startSub(t, port, "bob", "shared/#", "-V", "5")
	testutil.WaitFor(t, "both subscriptions", 15*time.Second, func() bool {
		mqttTry(t, port, "carol", "shared/ready")
		return strings.Contains(alice.out.String(), "shared/ready") && strings.Contains(bob.out.String(), "shared/ready")
	})

	// The ACL is edited: alice loses shared/#.
	writeFile(t, acl, strings.Replace(lossACL, "user alice\ntopic read shared/#\n", "user alice\n", 1))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "subscription removed: no longer authorized", "client=alice-sub", "filter=shared/#") {
		t.Fatal("alice's subscription was not removed")
	}
	mqttTry(t, port, "carol", "shared/after")
	mqttTry(t, port, "carol", "alice/marker")
	testutil.WaitFor(t, "alice's marker and bob's message", 15*time.Second, func() bool {
		return strings.Contains(alice.out.String(), "alice/marker") && strings.Contains(bob.out.String(), "shared/after")
	})
	if strings.Contains(alice.out.String(), "shared/after") {
		t.Errorf("alice still reads shared/#: %s", alice.out.String())
	}

	// bob's password is removed.
	if out, err := run(t, 20*time.Second, "mosquitto_passwd", "-D", pw, "bob"); err != nil {
		t.Fatal(err, out)
	}
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "client lost access; disconnecting", "client_id=bob-sub", "password removed or changed") {
		t.Fatal("bob was not disconnected")
	}
	if out, err := mqttTry(t, port, "bob", "x"); err == nil {
		t.Errorf("bob connected after his password was removed: %s", out)
	}
	mqttTry(t, port, "carol", "alice/still")
	testutil.WaitFor(t, "alice untouched", 15*time.Second, func() bool { return strings.Contains(alice.out.String(), "alice/still") })
}

// willRetainACL is the acl_file of the will and retained-source comparison.
const willRetainACL = `user alice
topic write will/#
topic write ret/#
topic read alice/#

user bob
topic read bob/#

user carol
topic write ret/#

user spy
topic read #
`

// brokerUnderTest is one of the two brokers the comparison runs against:
// its port, how to reload its files, and how to wait until it saw a
// client's connection end.
type brokerUnderTest struct {
	port     int
	reload   func()
	waitConn func(clientID string)
	waitEnd  func(clientID string)
}

// willAndRetainOutcomes runs the same will and retained-replay scenario on
// a broker and returns what the observers received.
func willAndRetainOutcomes(t *testing.T, b brokerUnderTest, acl string) (wills, replay []string) {
	t.Helper()
	spy := startSub(t, b.port, "spy", "will/#")
	testutil.WaitFor(t, "the spy's subscription", 15*time.Second, func() bool {
		mqttTry(t, b.port, "alice", "will/ready")
		return strings.Contains(spy.out.String(), "will/ready")
	})
	// bob's will is on a topic he may not publish to; alice's is allowed.
	for _, who := range []string{"bob", "alice"} {
		s := startSub(t, b.port, who, who+"/#", "--will-topic", "will/"+who, "--will-payload", "bye")
		b.waitConn(who + "-sub")
		s.cmd.Process.Kill()
		s.cmd.Wait()
		if who == "bob" {
			b.waitEnd(who + "-sub")
		}
	}
	testutil.WaitFor(t, "alice's will", 15*time.Second, func() bool { return strings.Contains(spy.out.String(), "will/alice") })
	for l := range strings.SplitSeq(strings.TrimSpace(spy.out.String()), "\n") {
		if !strings.Contains(l, "ready") {
			wills = append(wills, l)
		}
	}

	// alice and carol leave retained messages; alice then loses ret/#.
	for _, p := range [][2]string{{"alice", "ret/alice"}, {"carol", "ret/carol"}} {
		if out, err := mqttTry(t, b.port, p[0], p[1], "-r"); err != nil {
			t.Fatalf("%s: %v %s", p[0], err, out)
		}
	}
	writeFile(t, acl, strings.Replace(willRetainACL, "topic write ret/#\ntopic read alice/#", "topic read alice/#", 1))
	b.reload()
	// The marker is retained too. Both brokers replay retained messages
	// filter by filter in the order of the SUBSCRIBE, but in no set order
	// within one filter (Moat's index is a map): alice's retained
	// will/sync, the second filter, comes after every ret/ message.
	mqttTry(t, b.port, "carol", "ret/marker", "-r")
	mqttTry(t, b.port, "alice", "will/sync", "-r")
	r := startSub(t, b.port, "spy", "ret/#", "-i", "spy-ret", "-t", "will/sync")
	testutil.WaitFor(t, "the end of the replay", 15*time.Second, func() bool { return strings.Contains(r.out.String(), "will/sync") })
	for l := range strings.SplitSeq(r.out.String(), "\n") {
		if strings.HasPrefix(l, "ret/") {
			replay = append(replay, l)
		}
	}
	slices.Sort(replay)
	return wills, replay
}

// TestServeMosquittoWillAndRetainSource compares will and retained-replay
// outcomes with Debian's mosquitto on the same password_file and acl_file
// (check_retain_source true, the default of both): a will on a topic its
// client may not publish to is discarded, and a retained message whose
// publisher lost the right to write it is no longer replayed.
func TestServeMosquittoWillAndRetainSource(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto", "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub")
	conf := func(dir string, port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\nacl_file %s\ncheck_retain_source true\n",
			port, filepath.Join(dir, "passwd"), filepath.Join(dir, "acl"))
	}
	setup := func() string {
		dir := t.TempDir()
		makePasswd(t, filepath.Join(dir, "passwd"), "alice", "bob", "carol", "spy")
		writeFile(t, filepath.Join(dir, "acl"), willRetainACL)
		return dir
	}

	dir := setup()
	m := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), conf(dir, ports[0]))
		return []string{"-c", "mosquitto.conf", "--data", filepath.Join(dir, "data")}
	})
	port := m.port(0)
	moatWills, moatReplay := willAndRetainOutcomes(t, brokerUnderTest{
		port: port,
		reload: func() {
			n := strings.Count(m.logs.String(), "access: policy reloaded")
			m.cmd.Process.Signal(syscall.SIGHUP)
			testutil.WaitFor(t, "the policy reload", 15*time.Second, func() bool { return strings.Count(m.logs.String(), "access: policy reloaded") > n })
		},
		waitConn: func(id string) {
			testutil.WaitFor(t, id+"'s connection", 15*time.Second, func() bool {
				return strings.Contains(m.logs.String(), "client connected\" listener=tcp-"+strconv.Itoa(port)+" remote=") && strings.Contains(m.logs.String(), "client="+id+" version")
			})
		},
		waitEnd: func(id string) {
			testutil.WaitFor(t, id+"'s refused will", 15*time.Second, func() bool {
				return strings.Contains(m.logs.String(), "will not authorized") && strings.Contains(m.logs.String(), "client="+id)
			})
		},
	}, filepath.Join(dir, "acl"))
	if !slices.Equal(moatWills, []string{"will/alice bye"}) || !slices.Equal(moatReplay, []string{"ret/carol m", "ret/marker m"}) {
		t.Errorf("moat: wills %q, replay %q", moatWills, moatReplay)
	}

	mdir := setup()
	mq := testutil.StartMosquitto(t, 1, func(ports []int) string { return conf(mdir, ports[0]) + "log_dest stderr\nlog_type all\n" })
	mqWills, mqReplay := willAndRetainOutcomes(t, brokerUnderTest{
		port: mq.Ports[0],
		reload: func() {
			n := strings.Count(mq.Log(), "Reloading config")
			mq.Signal(syscall.SIGHUP)
			testutil.WaitFor(t, "mosquitto's reload", 15*time.Second, func() bool { return strings.Count(mq.Log(), "Reloading config") > n })
		},
		waitConn: func(id string) {
			testutil.WaitFor(t, id+"'s connection", 15*time.Second, func() bool { return strings.Contains(mq.Log(), " as "+id+" ") })
		},
		waitEnd: func(id string) {
			testutil.WaitFor(t, id+"'s disconnection", 15*time.Second, func() bool { return strings.Contains(mq.Log(), "Client "+id+" closed its connection") })
		},
	}, filepath.Join(mdir, "acl"))
	if !slices.Equal(moatWills, mqWills) || !slices.Equal(moatReplay, mqReplay) {
		t.Errorf("moat: wills %q replay %q; mosquitto: wills %q replay %q", moatWills, moatReplay, mqWills, mqReplay)
	}
}
