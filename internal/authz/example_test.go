package authz_test

import (
	"fmt"
	"strings"

	"github.com/moatmq/moat/internal/authz"
)

func ExamplePolicy_Decide() {
	acl, err := authz.ParseACLFile("acl", strings.NewReader("user alice\ntopic readwrite alice/#\ntopic deny alice/private\n"))
	if err != nil {
		panic(err)
	}
	p, err := authz.New(authz.Options{
		Rules: []authz.RuleSpec{{
			Name: "devices", Effect: "allow",
			Subjects: authz.Subjects{OU: []string{"devices"}},
			Actions:  []string{"publish", "read"},
			Topics:   []string{"devices/%{cn}/#"},
		}},
		ACL: acl,
	})
	if err != nil {
		panic(err)
	}
	h := authz.NewHolder(p)

	alice := &authz.Subject{Username: "alice", ClientID: "a1"}
	dev := &authz.Subject{Username: "s7", ClientID: "s7", Cert: authz.Cert{CN: "s7", OU: []string{"devices"}}}
	for _, req := range []authz.Request{
		{Subject: alice, Action: authz.Publish, Topic: "alice/x"},
		{Subject: alice, Action: authz.Subscribe, Topic: "alice/private"},
		{Subject: dev, Action: authz.Subscribe, Topic: "devices/+/cmd"},
		{Subject: dev, Action: authz.Receive, Topic: "devices/s8/cmd"},
	} {
		d := h.Decide(req)
		fmt.Println(req.Action, req.Topic, d.Allow, d.Rule)
	}
	// Output:
	// publish alice/x true acl:2
	// subscribe alice/private false default
	// subscribe devices/+/cmd true rules: devices
	// receive devices/s8/cmd false default
}
