package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testslapd"
)

// TestSecurityLDAPRecheckWithSlapd runs moat serve's LDAP backend against
// a real slapd. Alice, a member of "operators" (whose rule lets it read
// ops/#), and carol subscribe to ops/# with mosquitto_sub; bob reads
// pub/#. In the directory alice is then taken out of "operators" and bob's
// account is deleted (the attack: keep the rights of CONNECT after losing
// them in the directory). The re-check, triggered through the injected
// ticker, applies alice's new groups to her live session (her ops/#
// subscription is removed; her connection and her other subscription
// stay, so she loses exactly the deliveries she may no longer read),
// disconnects bob, and leaves carol alone. Both are recorded in the audit
// log as access.lost with trigger "ldap".
func TestSecurityLDAPRecheckWithSlapd(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_sub", "mosquitto_pub")
	d := testslapd.Start(t)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "service.pw")
	writeFile(t, pwFile, testslapd.ServicePW+"\n")
	yaml := fmt.Sprintf(`listeners:
  - address: 127.0.0.1:0
    transport: tcp
auth:
  - type: ldap
    url: %s
    starttls: true
    ca_file: %s
    search:
      base: %s
      bind_dn: %s
      bind_password_file: %s
    group:
      base: %s
    recheck_interval: 1h
acl:
  rules:
    - {name: operators, effect: allow, subjects: {groups: [operators]}, actions: [publish, read], topics: ["ops/#"]}
    - {name: everyone, effect: allow, subjects: {anonymous: false}, actions: [publish, read], topics: ["pub/#"]}
`, d.LDAPURL, d.CAFile, testslapd.PeopleBase, testslapd.ServiceDN, pwFile, testslapd.GroupsBase)
	cfg, err := config.Parse(filepath.Join(dir, "moat.yaml"), []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(dir, "data")
	var logs testutil.Buffer
	p := newPlan(cfg, slog.New(slog.NewTextHandler(&logs, nil)), false)
	tick := make(chan time.Time)
	p.recheckTick = tick
	if _, err := p.build(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx, Stdio{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	port := readyPort(t, &logs)

	alice := startSub(t, port, "alice", "ops/#", "-V", "5", "-t", "pub/#")
	carol := startSub(t, port, "carol", "ops/#", "-V", "5")
	bob := startSub(t, port, "bob", "pub/#", "-V", "5")
	// Subscribed once a warm-up message reaches them.
	testutil.WaitFor(t, "subscriptions", 15*time.Second, func() bool {
		if out, err := mqttTry(t, port, "carol", "ops/warm"); err != nil {
			t.Fatalf("carol publishing: %v %s", err, out)
		}
		return strings.Contains(alice.out.String(), "ops/warm") && strings.Contains(carol.out.String(), "ops/warm")
	})
	testutil.WaitFor(t, "bob's subscription", 15*time.Second, func() bool {
		mqttTry(t, port, "carol", "pub/warm")
		return strings.Contains(bob.out.String(), "pub/warm")
	})

	d.RemoveMember(t, "operators", "uid=alice,"+testslapd.PeopleBase)
	d.DeleteEntry(t, "uid=bob,"+testslapd.PeopleBase)
	tick <- time.Now()
	srv := p.srv
	testutil.WaitFor(t, "the re-check", 15*time.Second, func() bool {
		st := srv.Stats()
		return st.SubscriptionsRevoked == 1 && st.RevokedDisconnects == 1
	})

	for _, topic := range []string{"ops/after", "pub/marker"} {
		if out, err := mqttTry(t, port, "carol", topic); err != nil {
			t.Fatalf("carol publishing %s: %v %s", topic, err, out)
		}
	}
	testutil.WaitFor(t, "the marker at alice", 15*time.Second, func() bool { return strings.Contains(alice.out.String(), "pub/marker") })
	if strings.Contains(alice.out.String(), "ops/after") {
		t.Errorf("alice, no longer an operator, received ops/after:\n%s", alice.out.String())
	}
	testutil.WaitFor(t, "ops/after at carol", 15*time.Second, func() bool { return strings.Contains(carol.out.String(), "ops/after") })
	var aliceThere bool
	for _, c := range srv.Clients() {
		switch c.Client.Username {
		case "alice":
			aliceThere = true
			if g := c.Client.Grants().Groups; slices.Contains(g, "operators") || !slices.Contains(g, "viewers") {
				t.Errorf("alice's groups now: %q", g)
			}
		case "bob":
			t.Error("bob, whose account was deleted, is still connected")
		}
	}
	if !aliceThere {
		t.Error("alice was disconnected; her new groups should apply to her live connection")
	}

	stop()
	lost := map[string]*audit.Entry{}
	for _, e := range auditEntries(t, filepath.Join(cfg.DataDir, "audit.log")) {
		if e.Type == audit.TypeAccessLost {
			u, _ := field(e, "username").(string)
			lost[u] = e
		}
	}
	if e := lost["alice"]; e == nil || field(e, "trigger") != "ldap" || field(e, "unsubscribed") != int64(1) || field(e, "reason") != "LDAP groups changed" {
		t.Errorf("alice's access.lost: %+v", e)
	}
	if e := lost["bob"]; e == nil || field(e, "trigger") != "ldap" || field(e, "disconnected") != int64(1) {
		t.Errorf("bob's access.lost: %+v", e)
	}
	if lost["carol"] != nil {
		t.Error("carol, unchanged, was recorded as losing access")
	}
}

// TestServeAlwaysWiresAuthorizer: moat serve never leaves the broker's
// Authorizer nil; a listener without a policy gets an explicit
// allow-everything decision that names its cause.
func TestServeAlwaysWiresAuthorizer(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mosquitto.conf")
	writeFile(t, file, "listener 18830 127.0.0.1\nallow_anonymous true\n")
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	p, err := buildPlan(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	az, ok := p.broker.Authorizer.(*accessAuthorizer)
	if !ok {
		t.Fatalf("Authorizer is %T", p.broker.Authorizer)
	}
	d := az.Authorize(&broker.AuthzRequest{Client: &broker.Client{Listener: cfg.Listeners[0].Name}, Action: broker.ActionPublish, Topic: "a"})
	if !d.Allow || !strings.Contains(d.Reason, "no access policy") {
		t.Errorf("decision %+v", d)
	}
}
