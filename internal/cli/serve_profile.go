package cli

import (
	"crypto/fips140"
	"errors"
	"slices"

	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/config"
)

// profileProbe is the made-up client and topic an access policy is asked
// about to tell whether it lets anyone do anything.
const profileProbe = "moat-profile-probe-7f3a"

// planProfile checks the configuration against its security profile
// (docs/profiles.md): every violation is a problem at the line of the
// setting, so serve refuses to start and --check lists them all.
func (p *servePlan) planProfile() {
	facts := config.ProfileFacts{
		FIPS: fips140.Enabled(),
		// The audit log is on unless the configuration turns it off.
		AuditLog: !p.cfg.Audit.Disabled,
	}
	if p.access != nil {
		for _, ps := range p.access.policies {
			if ps.holder != nil && policyAllowsAll(ps.holder) && !slices.Contains(facts.OpenPolicies, ps.desc) {
				facts.OpenPolicies = append(facts.OpenPolicies, ps.desc)
			}
		}
	}
	for _, v := range p.cfg.ProfileViolations(facts) {
		p.problem(v.Path, "", errors.New(v.Msg))
	}
	p.warnings = append(p.warnings, p.cfg.ProfileWarnings()...)
}

// policyAllowsAll reports whether the policy lets an authenticated client
// nobody named publish to and subscribe to a topic nobody named.
func policyAllowsAll(h *authz.Holder) bool {
	s := &authz.Subject{Username: profileProbe, ClientID: profileProbe, Listener: profileProbe}
	topic := profileProbe + "/any/topic"
	return h.Decide(authz.Request{Subject: s, Action: authz.Publish, Topic: topic}).Allow &&
		h.Decide(authz.Request{Subject: s, Action: authz.Subscribe, Topic: topic}).Allow
}

// profileName is the profile in force, "none" without one.
func profileName(cfg *config.Config) string {
	if cfg.Profile == "" {
		return "none"
	}
	return cfg.Profile
}
