package authn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

type fixed struct {
	name string
	res  Result
	err  error
}

func (f fixed) Name() string { return f.name }
func (f fixed) Authenticate(context.Context, *Request) (Result, error) {
	return f.res, f.err
}

func TestChainOrder(t *testing.T) {
	down := fixed{name: "ldap", err: errors.New("connection refused")}
	mine := fixed{name: "passwd", res: Result{Verdict: Allow, Username: "u"}}
	deny := fixed{name: "jwt", res: Result{Verdict: Deny, Reason: "expired"}}
	skip := fixed{name: "skip"}
	for _, tc := range []struct {
		name    string
		chain   []Backend
		verdict Verdict
		backend string
		err     bool
	}{
		{"empty", nil, NotMine, "", false},
		{"first not mine", []Backend{skip, mine}, Allow, "passwd", false},
		{"deny stops", []Backend{deny, mine}, Deny, "jwt", false},
		// A backend that is down is never skipped: the next backend
		// could admit a client the first one would refuse.
		{"error fails closed", []Backend{skip, down, mine}, Deny, "ldap", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Chain{Backends: tc.chain}
			res, err := c.Authenticate(context.Background(), &Request{})
			if (err != nil) != tc.err || res.Verdict != tc.verdict || res.Backend != tc.backend {
				t.Fatalf("got %v %q err=%v, want %v %q err=%v", res.Verdict, res.Backend, err, tc.verdict, tc.backend, tc.err)
			}
			if err != nil && !errors.Is(err, ErrUnavailable) {
				t.Errorf("error %v does not wrap ErrUnavailable", err)
			}
		})
	}
}

func TestPasswordRedacted(t *testing.T) {
	p := NewPassword([]byte("hunter2"))
	var sb strings.Builder
	slog.New(slog.NewTextHandler(&sb, nil)).Info("x", "p", p)
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%#v", p), fmt.Sprintf("%+v", struct{ P Password }{p}), sb.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
	if !p.Equal(NewPassword([]byte("hunter2"))) || p.Equal(NewPassword([]byte("hunter3"))) {
		t.Error("Equal")
	}
}
