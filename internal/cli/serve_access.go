package cli

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/introspect"
	"github.com/moatmq/moat/internal/authn/jwt"
	"github.com/moatmq/moat/internal/authn/ldap"
	"github.com/moatmq/moat/internal/authn/passwd"
	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
)

// accessPlan is the access control of a serve plan: every listener's
// authentication chain and access policy, and what reloads them. See
// docs/access-control.md, "Configuration and precedence".
type accessPlan struct {
	log *slog.Logger

	limiter  *passwd.Limiter          // one per process, shared by every password file
	files    map[string]*passwd.File  // by path and mode, shared by the listeners naming it
	scram    map[string]*scramBackend // by path, shared by the listeners naming it
	chains   map[string]*authn.Chain  // by listener name; nil or empty: certificates and the anonymous policy only
	policies []*policySource          // distinct policies
	byLn     map[string]*policySource // by listener name; nil: no ACL (everything allowed)

	defaultPolicy string // the zero-config policy file, when in use
	watchEvery    time.Duration
	policyMu      sync.Mutex // serializes policy reloads (the watcher and SIGHUP)

	// srv is the broker once started: the loss-of-access path
	// (Reevaluate) runs on it. Nil before (nothing to re-evaluate then).
	srv atomic.Pointer[broker.Server]
	// record writes an audit entry (the defense's; nil without one).
	record func(typ string, fields ...audit.Field)
	// ldaps are the LDAP backends whose live clients are looked up again
	// every recheck interval.
	ldaps []ldapRecheck
	// passwordGone, in a cluster, tells the other nodes of the users a
	// password file reload removed or changed (serve_cluster_security.go).
	// Set before serving; nil without a cluster.
	passwordGone func(f *passwd.File, users []string)
}

// ldapRecheck is one LDAP backend and how often its clients are checked.
type ldapRecheck struct {
	b     rechecker
	every time.Duration
}

// rechecker looks a connected user up again (ldap.Backend.Recheck).
type rechecker interface {
	Name() string
	Recheck(ctx context.Context, username string) (groups []string, exists bool, err error)
}

// defaultLDAPRecheck is how often the clients an LDAP backend admitted
// are looked up again (ldap recheck_interval).
const defaultLDAPRecheck = 5 * time.Minute

// policySource is one access policy and the files it was compiled from.
type policySource struct {
	spec   authz.Spec
	source string // where the spec was written (a file, or the config file)
	desc   string // how logs and reasons name the policy: source, and the acl_file it reads
	rules  string // a rules file to re-read on reload (the zero-config policy), or ""
	holder *authz.Holder
	sum    [sha256.Size]byte // of the files, as last compiled
	failed [sha256.Size]byte // of the files, as last refused (logged once)
}

// accessWatchInterval is how often password files and ACL files are
// checked for changes.
const accessWatchInterval = 2 * time.Second

// planAccess builds the authentication chains and access policies. Every
// problem is recorded at the line of its setting; files named by the
// configuration are read and checked now, for --check as for serve.
func (p *servePlan) planAccess() {
	a := &accessPlan{
		log:        p.log,
		limiter:    passwd.NewLimiter(0),
		files:      map[string]*passwd.File{},
		scram:      map[string]*scramBackend{},
		chains:     map[string]*authn.Chain{},
		byLn:       map[string]*policySource{},
		watchEvery: accessWatchInterval,
	}
	p.access = a
	if p.defense != nil {
		a.record = p.defense.record
	}
	cfg := p.cfg
	global := p.planChain("auth", cfg.Auth)
	// Which policy applies where nothing more specific does: the acl
	// section; for Moat YAML without one (and without any configuration)
	// the default policy, because no match must mean deny; nothing for
	// acl.allow_all, the explicit opt-out, and for a mosquitto.conf without
	// acl_file, which keeps Mosquitto's meaning (everything allowed). Both
	// are warned about at every start.
	var globalPolicy *policySource
	switch {
	case cfg.ACL != nil && cfg.ACL.AllowAll:
		p.planAllowAll(cfg.ACL)
	case cfg.ACL != nil:
		globalPolicy = p.planPolicy("acl", cfg.ACL, cfg.Source)
	case cfg.Source == "" || cfg.Format == config.FormatYAML:
		globalPolicy = p.planDefaultPolicy()
		if globalPolicy != nil && cfg.Source != "" {
			p.log.Info("access: the configuration has no acl section; the default access policy applies: each identity may publish and subscribe under devices/<username>/# and read broadcast/#, the identity operator everything, and nothing else",
				"policy", globalPolicy.desc)
		}
	}
	perFile := map[string]*policySource{}
	var open []string
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		chain := global
		if p.cfg.IsSet(fmt.Sprintf("listeners[%d].auth", i)) {
			chain = p.planChain(fmt.Sprintf("listeners[%d].auth", i), l.Auth)
		}
		a.chains[l.Name] = chain
		ps := globalPolicy
		if l.ACLFile != "" {
			if ps = perFile[l.ACLFile]; ps == nil {
				ps = p.planPolicy(fmt.Sprintf("listeners[%d].acl_file", i), &config.ACL{File: l.ACLFile}, cfg.Source)
				perFile[l.ACLFile] = ps
			}
		}
		a.byLn[l.Name] = ps
		if ps == nil {
			open = append(open, l.Name)
		}
	}
	switch {
	case len(open) == 0:
	case cfg.ACL != nil && cfg.ACL.AllowAll:
		p.warnings = append(p.warnings, fmt.Sprintf("ACCESS CONTROL IS OFF (acl.allow_all: true): every client admitted by listener(s) %s may publish and subscribe to every topic, $SYS and every device's command topics included; write acl rules instead (docs/access-control.md)", strings.Join(open, ", ")))
	default:
		p.warnings = append(p.warnings, fmt.Sprintf("no access policy (acl_file or acl rules) applies to listener(s) %s: every client they admit may publish and subscribe to every topic, as in Mosquitto without an acl_file; see docs/access-control.md", strings.Join(open, ", ")))
	}
	if a.defaultPolicy != "" {
		var anon []string
		for i := range cfg.Listeners {
			if l := &cfg.Listeners[i]; l.AllowAnonymous && a.byLn[l.Name] == globalPolicy {
				anon = append(anon, l.Name)
			}
		}
		if len(anon) > 0 {
			p.warnings = append(p.warnings, fmt.Sprintf("listener(s) %s admit anonymous clients, to which the default access policy %s grants nothing: add an acl section with rules for them (docs/access-control.md)", strings.Join(anon, ", "), a.defaultPolicy))
		}
	}
	for _, ps := range a.policies {
		if ps.holder != nil {
			p.log.Info("access: policy loaded", "policy", ps.desc, "generation", ps.holder.Generation())
		}
	}
	p.broker.Authenticator = &accessAuthenticator{cert: p.auth, chains: a.chains, log: p.log}
	p.broker.EnhancedAuthenticator = &enhancedAuth{cert: p.auth, chains: a.chains, log: p.log}
	p.broker.Authorizer = &accessAuthorizer{byLn: a.byLn}
	if !p.check {
		a.startWatch(p)
	}
}

// planChain builds the chain of an auth list at path.
func (p *servePlan) planChain(path string, list []config.AuthBackend) *authn.Chain {
	chain := &authn.Chain{}
	for i := range list {
		bp := fmt.Sprintf("%s[%d]", path, i)
		b, err := p.access.backend(&list[i], p.log)
		if err != nil {
			p.backendProblem(bp, err)
			continue
		}
		if c, ok := b.(interface{ Close() error }); ok {
			p.cleanup = append(p.cleanup, func() { c.Close() })
		}
		chain.Backends = append(chain.Backends, b)
	}
	return chain
}

// backendProblem records err for the auth entry at bp: an unknown key at
// that key's line, anything else at the entry's path or type.
func (p *servePlan) backendProblem(bp string, err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			p.backendProblem(bp, e)
		}
		return
	}
	msg := err.Error()
	key := bp + ".type"
	if k, ok := strings.CutPrefix(msg, `unknown key "`); ok {
		k, _, _ = strings.Cut(k, `"`)
		key = bp + "." + k
	} else if p.cfg.Pos(bp+".path") != p.cfg.Pos(bp) {
		key = bp + ".path"
	}
	p.problem(key, bp+": ", err)
}

// passwordFileYAML is a password_file entry of an auth list.
type passwordFileYAML struct {
	Type string `yaml:"type"`
	Path string `yaml:"path"`
	// UnknownUsers is "deny" (the default, as Mosquitto) or "pass": a
	// username the file does not list is left to the next backend.
	UnknownUsers string `yaml:"unknown_users"`
}

type ldapYAML struct {
	Type              string `yaml:"type"`
	URL               string `yaml:"url"`
	StartTLS          bool   `yaml:"starttls"`
	InsecurePlaintext bool   `yaml:"insecure_plaintext"`
	CAFile            string `yaml:"ca_file"`
	ServerName        string `yaml:"server_name"`
	BindDNTemplate    string `yaml:"bind_dn_template"`
	Search            struct {
		Base             string `yaml:"base"`
		Filter           string `yaml:"filter"`
		BindDN           string `yaml:"bind_dn"`
		BindPasswordFile string `yaml:"bind_password_file"`
		BindPasswordEnv  string `yaml:"bind_password_env"`
	} `yaml:"search"`
	Group struct {
		Base          string            `yaml:"base"`
		Filter        string            `yaml:"filter"`
		Attribute     string            `yaml:"attribute"`
		UserAttribute string            `yaml:"user_attribute"`
		Map           map[string]string `yaml:"map"`
	} `yaml:"group"`
	Timeout  config.Duration `yaml:"timeout"`
	PoolSize int             `yaml:"pool_size"`
	MaxBinds int             `yaml:"max_binds"`
	// RecheckInterval is how often connected clients are looked up again
	// (groups changed, account removed); default 5m, negative: never.
	// Needs a service account (search.bind_dn).
	RecheckInterval config.Duration `yaml:"recheck_interval"`
}

type jwtYAML struct {
	Type               string          `yaml:"type"`
	JWKSURL            string          `yaml:"jwks_url"`
	PublicKeyFiles     []string        `yaml:"public_key_files"`
	HMACSecretFile     string          `yaml:"hmac_secret_file"`
	CAFile             string          `yaml:"ca_file"`
	Issuer             string          `yaml:"issuer"`
	Audience           []string        `yaml:"audience"`
	Algorithms         []string        `yaml:"algorithms"`
	Leeway             config.Duration `yaml:"leeway"`
	ExpOptional        bool            `yaml:"exp_optional"`
	MaxTokenSize       config.Size     `yaml:"max_token_size"`
	UsernameClaim      string          `yaml:"username_claim"`
	MatchUsername      bool            `yaml:"match_username"`
	Exclusive          bool            `yaml:"exclusive"`
	GroupsClaim        string          `yaml:"groups_claim"`
	PublishClaim       string          `yaml:"publish_claim"`
	SubscribeClaim     string          `yaml:"subscribe_claim"`
	RefreshInterval    config.Duration `yaml:"refresh_interval"`
	MinRefreshInterval config.Duration `yaml:"min_refresh_interval"`
	MaxStale           config.Duration `yaml:"max_stale"`
}

type introspectionYAML struct {
	Type             string          `yaml:"type"`
	URL              string          `yaml:"url"`
	CAFile           string          `yaml:"ca_file"`
	ClientID         string          `yaml:"client_id"`
	ClientSecretFile string          `yaml:"client_secret_file"`
	ClientSecretEnv  string          `yaml:"client_secret_env"`
	UsernameClaim    string          `yaml:"username_claim"`
	GroupsClaim      string          `yaml:"groups_claim"`
	Issuer           string          `yaml:"issuer"`
	Audience         []string        `yaml:"audience"`
	MatchUsername    bool            `yaml:"match_username"`
	Leeway           config.Duration `yaml:"leeway"`
	MaxTokenSize     config.Size     `yaml:"max_token_size"`
	MaxResponseSize  config.Size     `yaml:"max_response_size"`
	Timeout          config.Duration `yaml:"timeout"`
	MaxConcurrent    int             `yaml:"max_concurrent"`
	CacheTTL         config.Duration `yaml:"cache_ttl"`
	NegativeCacheTTL config.Duration `yaml:"negative_cache_ttl"`
	MaxCacheEntries  int             `yaml:"max_cache_entries"`
}

// backend builds one backend of an auth list. A password file named by
// several listeners is loaded once.
func (a *accessPlan) backend(b *config.AuthBackend, log *slog.Logger) (authn.Backend, error) {
	switch b.Type {
	case config.AuthPasswordFile:
		var y passwordFileYAML
		if err := b.Decode(&y); err != nil {
			return nil, err
		}
		pass := false
		switch y.UnknownUsers {
		case "", "deny":
		case "pass":
			pass = true
		default:
			return nil, fmt.Errorf("unknown_users %q: want deny or pass", y.UnknownUsers)
		}
		key := fmt.Sprintf("%s\x00%v", y.Path, pass)
		if f := a.files[key]; f != nil {
			return f, nil
		}
		f, err := passwd.Load(y.Path, passwd.Config{Limiter: a.limiter, PassUnknown: pass})
		if err != nil {
			return nil, err
		}
		a.files[key] = f
		return f, nil
	case config.AuthSCRAM:
		var y struct {
			Type string `yaml:"type"`
			Path string `yaml:"path"`
		}
		if err := b.Decode(&y); err != nil {
			return nil, err
		}
		if sb := a.scram[y.Path]; sb != nil {
			return sb, nil
		}
		sb, err := newSCRAMBackend(y.Path)
		if err != nil {
			return nil, err
		}
		a.scram[y.Path] = sb
		return sb, nil
	case config.AuthLDAP:
		var y ldapYAML
		if err := b.Decode(&y); err != nil {
			return nil, err
		}
		b, err := ldap.New(ldap.Config{
			URL: y.URL, StartTLS: y.StartTLS, InsecurePlaintext: y.InsecurePlaintext, CAFile: y.CAFile, ServerName: y.ServerName,
			BindDNTemplate: y.BindDNTemplate,
			Search: ldap.Search{Base: y.Search.Base, Filter: y.Search.Filter, BindDN: y.Search.BindDN,
				BindPasswordFile: y.Search.BindPasswordFile, BindPasswordEnv: y.Search.BindPasswordEnv},
			Group: ldap.Group{Base: y.Group.Base, Filter: y.Group.Filter, Attribute: y.Group.Attribute,
				UserAttribute: y.Group.UserAttribute, Map: y.Group.Map},
			Timeout: y.Timeout.D(), PoolSize: y.PoolSize, MaxBinds: y.MaxBinds, Logger: log,
		})
		if err != nil {
			return nil, err
		}
		if every := y.RecheckInterval.D(); every >= 0 && y.Search.BindDN != "" {
			a.ldaps = append(a.ldaps, ldapRecheck{b: b, every: cmp.Or(every, defaultLDAPRecheck)})
		} else if every >= 0 {
			log.Warn("access: LDAP clients are not re-checked while connected: set search.bind_dn (a service account) for that", "url", y.URL)
		}
		return b, nil
	case config.AuthJWT:
		var y jwtYAML
		if err := b.Decode(&y); err != nil {
			return nil, err
		}
		return jwt.New(jwt.Config{
			JWKSURL: y.JWKSURL, CAFile: y.CAFile, PublicKeyFiles: y.PublicKeyFiles, HMACSecretFile: y.HMACSecretFile,
			Algorithms: y.Algorithms, Issuer: y.Issuer, Audience: y.Audience, Leeway: y.Leeway.D(), ExpOptional: y.ExpOptional,
			MaxTokenBytes: int(y.MaxTokenSize), UsernameClaim: y.UsernameClaim, MatchUsername: y.MatchUsername,
			Exclusive: y.Exclusive, GroupsClaim: y.GroupsClaim, PublishClaim: y.PublishClaim, SubscribeClaim: y.SubscribeClaim,
			RefreshInterval: y.RefreshInterval.D(), MinRefreshInterval: y.MinRefreshInterval.D(), MaxStale: y.MaxStale.D(),
			Logger: log,
		})
	case config.AuthIntrospection:
		var y introspectionYAML
		if err := b.Decode(&y); err != nil {
			return nil, err
		}
		return introspect.New(introspect.Config{
			URL: y.URL, CAFile: y.CAFile, ClientID: y.ClientID, ClientSecretFile: y.ClientSecretFile, ClientSecretEnv: y.ClientSecretEnv,
			UsernameClaim: y.UsernameClaim, GroupsClaim: y.GroupsClaim, Issuer: y.Issuer, Audience: y.Audience,
			MatchUsername: y.MatchUsername, Leeway: y.Leeway.D(), MaxTokenBytes: int(y.MaxTokenSize),
			MaxResponseBytes: int64(y.MaxResponseSize), Timeout: y.Timeout.D(), MaxConcurrent: y.MaxConcurrent,
			CacheTTL: y.CacheTTL.D(), NegativeCacheTTL: y.NegativeCacheTTL.D(), MaxCacheEntries: y.MaxCacheEntries,
			Logger: log,
		})
	}
	return nil, fmt.Errorf("unknown backend type %q", b.Type)
}

// aclSection is the acl section of Moat YAML: the policy's Spec and the
// opt-out from access control.
type aclSection struct {
	authz.Spec `yaml:",inline"`
	AllowAll   bool `yaml:"allow_all"`
}

// planAllowAll checks an acl section that turns access control off: it
// may say nothing else, since rules next to it would look as if they
// applied.
func (p *servePlan) planAllowAll(acl *config.ACL) {
	var sec aclSection
	if err := acl.Decode(&sec); err != nil {
		p.problem("acl", "", fmt.Errorf("acl: %w", err))
		return
	}
	if len(sec.Rules) > 0 || sec.ACLFile != "" {
		p.problem("acl.allow_all", "", errors.New("acl.allow_all: true turns access control off, and the rules and acl_file beside it would never apply: remove allow_all or them"))
	}
}

// planPolicy compiles an acl section (rules and/or acl_file) at path.
func (p *servePlan) planPolicy(path string, acl *config.ACL, source string) *policySource {
	var sec aclSection
	if err := acl.Decode(&sec); err != nil {
		p.problem(path, "", fmt.Errorf("%s: %w", path, err))
		return nil
	}
	spec := sec.Spec
	ps := &policySource{spec: spec, source: cmpOr(source, "built-in default")}
	pol, desc, sum, err := ps.compile()
	if err != nil {
		key := path
		if acl.File != "" && !strings.HasSuffix(path, "acl_file") {
			key = path + ".acl_file"
		}
		p.problem(key, "", err)
		return nil
	}
	ps.desc, ps.sum = desc, sum
	ps.holder = authz.NewHolder(pol)
	p.access.policies = append(p.access.policies, ps)
	return ps
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// compile reads the policy's files and compiles it. sum covers what was
// read, so that a reload can tell whether anything changed.
func (ps *policySource) compile() (*authz.Policy, string, [sha256.Size]byte, error) {
	h := sha256.New()
	spec := ps.spec
	if ps.rules != "" {
		data, err := readPolicyFile(ps.rules)
		if err != nil {
			return nil, "", [32]byte{}, fmt.Errorf("access policy %s: %w", ps.rules, err)
		}
		h.Write(data)
		spec = authz.Spec{}
		if err := decodeStrict(data, &spec); err != nil {
			return nil, "", [32]byte{}, fmt.Errorf("access policy %s: %w", ps.rules, err)
		}
	}
	if spec.ACLFile != "" {
		data, err := readPolicyFile(spec.ACLFile)
		if err == nil {
			h.Write([]byte{0})
			h.Write(data)
		}
	}
	src := ps.source
	if ps.rules != "" {
		src = ps.rules
	}
	pol, desc, err := buildPolicy(spec, src)
	if err != nil {
		return nil, "", [32]byte{}, err
	}
	return pol, desc, [sha256.Size]byte(h.Sum(nil)), nil
}

// fingerprint hashes the policy's files as they are now.
func (ps *policySource) fingerprint() [sha256.Size]byte {
	h := sha256.New()
	aclFile := ps.spec.ACLFile
	if ps.rules != "" {
		data, err := readPolicyFile(ps.rules)
		if err != nil {
			return [32]byte{1}
		}
		h.Write(data)
		var spec authz.Spec
		if decodeStrict(data, &spec) == nil {
			aclFile = spec.ACLFile
		}
	}
	if aclFile != "" {
		data, err := readPolicyFile(aclFile)
		if err != nil {
			return [32]byte{2}
		}
		h.Write([]byte{0})
		h.Write(data)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// reload recompiles the policy when its files changed. A policy that does
// not compile leaves the previous one in force; the error is logged once
// per content.
func (ps *policySource) reload(log *slog.Logger) (changed bool) {
	if ps.holder == nil {
		return
	}
	fp := ps.fingerprint()
	if fp == ps.sum || fp == ps.failed {
		return
	}
	pol, desc, sum, err := ps.compile()
	if err != nil {
		ps.failed = fp
		log.Error("access: the changed policy was not loaded; the previous one stays in force", "policy", ps.desc, "err", err)
		return
	}
	if sum == ps.sum {
		return
	}
	ps.desc, ps.sum, ps.failed = desc, sum, [32]byte{}
	gen := ps.holder.Swap(pol)
	log.Warn("access: policy reloaded; live sessions are re-checked against it", "policy", desc, "generation", gen)
	changed = true
	return changed
}

// Default policy of the zero-configuration broker.
const defaultPolicyName = "acl.yaml"

const defaultPolicyText = `# Moat's default access policy, written by "moat serve" on first start.
# First matching rule decides; a request no rule matches is denied.
# Usernames are the CN of the client certificate (issued by "moat ca issue").
# Edit this file to change the policy: it is reloaded when it changes.
rules:
  # Full access for the operator: a certificate with CN "operator", issued
  # with: moat ca issue device operator --out operator
  # (never give a device the name "operator").
  - name: operator
    effect: allow
    subjects: {usernames: [operator]}
    actions: [publish, subscribe, receive]
    topics: ["#", "$SYS/#"]
  # Each device publishes and subscribes under its own tree.
  - name: device-own-tree
    effect: allow
    subjects: {anonymous: false}
    actions: [publish, subscribe, receive]
    topics: ["devices/%u/#"]
  # Every device reads the broadcast tree (the operator writes it).
  - name: broadcast-read
    effect: allow
    subjects: {anonymous: false}
    actions: [subscribe, receive]
    topics: ["broadcast/#"]
`

// planDefaultPolicy loads DATA_DIR/acl.yaml, writing the default policy
// first when it is absent (serve only; --check says it will).
func (p *servePlan) planDefaultPolicy() *policySource {
	path := filepath.Join(p.cfg.DataDir, defaultPolicyName)
	ps := &policySource{rules: path, source: path}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if p.check {
			p.notes = append(p.notes, fmt.Sprintf("the default access policy will be written to %s at start", path))
			ps.rules = ""
			ps.spec = defaultPolicySpec()
		} else if err := writeDefaultPolicy(path); err != nil {
			p.problem("data_dir", "", err)
			return nil
		} else {
			p.log.Info("access: wrote the default access policy", "file", path)
		}
	}
	pol, desc, sum, err := ps.compile()
	if err != nil {
		p.problem("data_dir", "", err)
		return nil
	}
	ps.desc, ps.sum = desc, sum
	ps.holder = authz.NewHolder(pol)
	p.access.policies = append(p.access.policies, ps)
	p.access.defaultPolicy = path
	return ps
}

func defaultPolicySpec() authz.Spec {
	var spec authz.Spec
	if err := decodeStrict([]byte(defaultPolicyText), &spec); err != nil {
		panic(err) // a constant; its test parses it
	}
	return spec
}

// writeDefaultPolicy creates path with the default policy, mode 0600,
// never replacing a file that appeared meanwhile.
func writeDefaultPolicy(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("serve: creating data directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("serve: writing the default access policy: %w", err)
	}
	if _, err := f.WriteString(defaultPolicyText); err != nil {
		f.Close()
		return fmt.Errorf("serve: writing the default access policy: %w", err)
	}
	return f.Close()
}

// printDefaultPolicy tells the operator where the zero-config policy is
// and how to get the operator's identity.
func (a *accessPlan) printDefaultPolicy(w io.Writer, caDir string) {
	if a == nil || a.defaultPolicy == "" {
		return
	}
	fmt.Fprintf(w, `Access policy: %[1]s (reloaded when edited).
Each device may publish and subscribe under devices/<its CN>/# and read
broadcast/#; everything else is denied. Full access needs an operator
certificate:

  %[3]s ca issue device operator --dir %[2]s --out operator

`, a.defaultPolicy, caDir, moatInvocation(os.Args[0], exec.LookPath))
}

// startWatch starts the goroutines that reload password files and ACL
// files when they change. They belong to the plan: cleanup stops them and
// close waits for them.
func (a *accessPlan) startWatch(p *servePlan) {
	ctx, cancel := context.WithCancel(context.Background())
	p.cleanup = append(p.cleanup, cancel)
	for _, f := range a.uniqueFiles() {
		t := time.NewTicker(a.watchEvery)
		p.tasks.Go(func() {
			defer t.Stop()
			f.Watch(ctx, t.C, func(c passwd.Change, err error) { a.reportPasswd(f, c, err) })
		})
	}
	for _, l := range a.ldaps {
		tick := p.recheckTick
		if tick == nil {
			t := time.NewTicker(l.every)
			p.cleanup = append(p.cleanup, t.Stop)
			tick = t.C
		}
		p.tasks.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick:
					a.recheckLDAP(ctx, l.b)
				}
			}
		})
	}
	if len(a.policies) > 0 {
		t := time.NewTicker(a.watchEvery)
		p.tasks.Go(func() {
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					a.reloadPolicies()
				}
			}
		})
	}
}

func (a *accessPlan) uniqueFiles() []*passwd.File {
	var out []*passwd.File
	for _, f := range a.files {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(x, y *passwd.File) int { return strings.Compare(x.Path(), y.Path()) })
	return out
}

func (a *accessPlan) reloadPolicies() {
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	for _, ps := range a.policies {
		if !ps.reload(a.log) {
			continue
		}
		// The swap is done: Reevaluate drops every cached decision
		// before it re-checks the sessions of this policy's listeners.
		a.reevaluate("policy", broker.Reevaluation{
			Match:  func(c *broker.Client) bool { return a.byLn[c.Listener] == ps },
			Reason: "access policy " + ps.desc + " changed",
		})
	}
}

func (a *accessPlan) reportPasswd(f *passwd.File, c passwd.Change, err error) {
	if err != nil {
		a.log.Error("access: password file not reloaded; the previous one stays in force", "file", f.Path(), "err", err)
		return
	}
	if c.Empty() {
		return
	}
	a.log.Warn("access: password file reloaded", "file", f.Path(), "users", f.Len(), "added", c.Added, "removed", c.Removed, "changed", c.Changed)
	// A removed user, or one whose password changed, no longer holds the
	// authentication its connection was admitted with.
	gone := make(map[string]bool, len(c.Removed)+len(c.Changed))
	for _, u := range slices.Concat(c.Removed, c.Changed) {
		gone[u] = true
	}
	if len(gone) > 0 && a.passwordGone != nil {
		a.passwordGone(f, slices.Concat(c.Removed, c.Changed))
	}
	if len(gone) > 0 {
		a.reevaluate("password", broker.Reevaluation{
			Match:      func(cl *broker.Client) bool { return cl.Grants().Backend == f.Name() && gone[cl.Username] },
			Disconnect: true,
			Reason:     "password removed or changed in " + f.Path(),
		})
	}
}

// recheckLDAP looks every client b admitted up again: a client whose
// account is gone is disconnected; one whose groups changed keeps its
// connection with its new groups, and its session is re-checked against
// them (subscriptions and queued messages they no longer allow are
// removed). A directory that cannot answer leaves the connections alone;
// the error is logged.
func (a *accessPlan) recheckLDAP(ctx context.Context, b rechecker) {
	srv := a.srv.Load()
	if srv == nil {
		return
	}
	gone := map[string]bool{}
	changed := map[string][]string{} // username → its groups now
	checked := map[string]bool{}
	for _, ci := range srv.Clients() {
		c := &ci.Client
		g := c.Grants()
		if g.Backend != b.Name() || checked[c.Username] {
			continue
		}
		checked[c.Username] = true
		groups, exists, err := b.Recheck(ctx, c.Username)
		switch {
		case err != nil:
			a.log.Error("access: LDAP re-check failed; connections kept", "backend", b.Name(), "username", c.Username, "err", err)
			return
		case !exists:
			gone[c.Username] = true
		case !sameSet(groups, g.Groups):
			changed[c.Username] = groups
		}
	}
	for u := range gone {
		a.reevaluate("ldap", broker.Reevaluation{
			Match:      func(c *broker.Client) bool { return c.Grants().Backend == b.Name() && c.Username == u },
			Disconnect: true,
			Reason:     "LDAP account no longer exists",
		})
	}
	for u, groups := range changed {
		a.log.Info("access: LDAP groups changed; applying them", "backend", b.Name(), "username", u, "groups", groups)
		a.reevaluate("ldap", broker.Reevaluation{
			Match:   func(c *broker.Client) bool { return c.Grants().Backend == b.Name() && c.Username == u },
			Regrant: func(g broker.Grants) broker.Grants { g.Groups = groups; return g },
			Reason:  "LDAP groups changed",
		})
	}
}

// reevaluate takes the loss-of-access path for a trigger of the access
// plan. Before the broker starts it does nothing (no session exists).
func (a *accessPlan) reevaluate(trigger string, r broker.Reevaluation) broker.ReevaluateResult {
	srv := a.srv.Load()
	if srv == nil {
		return broker.ReevaluateResult{}
	}
	return reevaluate(srv, a.record, trigger, r)
}

// reevaluate runs the broker's one loss-of-access path (Reevaluate) for a
// trigger ("policy", "reload", "password", "ldap", "ban") and records each
// client it acted on in the audit log as access.lost (record may be nil),
// so that every trigger leaves the same trail.
func reevaluate(srv *broker.Server, record func(string, ...audit.Field), trigger string, r broker.Reevaluation) broker.ReevaluateResult {
	res := srv.Reevaluate(r)
	if record != nil {
		for _, rc := range res.Clients {
			record(audit.TypeAccessLost, accessLostFields(trigger, r.Reason, rc)...)
		}
	}
	return res
}

// accessLostFields describes one client that lost access.
func accessLostFields(trigger, reason string, rc broker.ReevaluatedClient) []audit.Field {
	c := rc.Client
	fields := []audit.Field{audit.String("reason", reason), audit.String("trigger", trigger),
		audit.String("listener", c.Listener), audit.String("client_id", c.ClientID)}
	if ap, ok := addrPort(c.Remote); ok {
		fields = append(fields, audit.String("addr", ap.String()))
	}
	if c.Username != "" {
		fields = append(fields, audit.String("username", c.Username))
	}
	if certs := c.PeerCertificates(); len(certs) > 0 {
		fp, _ := guard.CertIdentity(certs[0])
		fields = append(fields, audit.String("cert_sha256", fp))
	}
	if rc.Disconnected {
		fields = append(fields, audit.Int("disconnected", 1))
	}
	if rc.Unsubscribed > 0 {
		fields = append(fields, audit.Int("unsubscribed", int64(rc.Unsubscribed)))
	}
	if rc.Dropped > 0 {
		fields = append(fields, audit.Int("dropped", int64(rc.Dropped)))
	}
	return fields
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// reload re-reads every password file and policy now (SIGHUP).
func (a *accessPlan) reload() {
	if a == nil {
		return
	}
	for _, f := range a.uniqueFiles() {
		c, err := f.Reload()
		a.reportPasswd(f, c, err)
	}
	for _, sb := range a.scram {
		if err := sb.file.Reload(); err != nil {
			a.log.Error("access: SCRAM credentials file not reloaded; the previous one stays in force", "file", sb.file.Path(), "err", err)
		} else {
			a.log.Info("access: SCRAM credentials file reloaded", "file", sb.file.Path(), "credentials", sb.file.Len())
		}
	}
	a.reloadPolicies()
}

// subjectOf builds c's policy Subject once per connection (through
// Client.Memo): after CONNECT, when the broker has set the verified
// username, the final client ID and what the authentication chain
// returned.
func subjectOf(c *broker.Client) *authz.Subject {
	return c.Memo(func(c *broker.Client) any {
		s := &authz.Subject{
			Username:  c.Username,
			Anonymous: c.Anonymous || c.Username == "",
			ClientID:  c.ClientID,
			Listener:  c.Listener,
		}
		g := c.Grants()
		s.Groups, s.CredentialPublish, s.CredentialSubscribe = g.Groups, g.Publish, g.Subscribe
		if ap, ok := addrPort(c.Remote); ok {
			s.Addr = ap.Addr().Unmap()
		}
		if certs := c.PeerCertificates(); len(certs) > 0 {
			s.Cert = certFields(certs[0])
		}
		return s
	}).(*authz.Subject)
}

// accessAuthorizer adapts the listeners' policies to broker.Authorizer.
// A listener without a policy allows everything (Mosquitto without an
// acl_file; the plan warns about it). The broker caches the decisions per
// connection and logs the denials.
type accessAuthorizer struct {
	byLn map[string]*policySource // read-only after start
}

var allowNoACL = broker.Decision{Allow: true, Reason: "no access policy configured for this listener", Rule: "none"}

func (a *accessAuthorizer) Authorize(req *broker.AuthzRequest) broker.Decision {
	c := req.Client
	ps := a.byLn[c.Listener]
	if ps == nil {
		return allowNoACL
	}
	var act authz.Action
	switch req.Action {
	case broker.ActionPublish:
		act = authz.Publish
	case broker.ActionSubscribe:
		act = authz.Subscribe
	case broker.ActionReceive:
		act = authz.Receive
	}
	d := ps.holder.Decide(authz.Request{Subject: subjectOf(c), Action: act, Topic: req.Topic, ShareGroup: req.ShareGroup, QoS: req.QoS, Retain: req.Retain})
	return broker.Decision{Allow: d.Allow, Reason: d.Reason, Rule: d.Rule}
}

// Uniform answers every request on a listener without a policy with
// allowNoACL, whatever its topic (broker.UniformAuthorizer): the broker
// then keeps one decision per connection and action. byLn does not change
// after start, so neither does the answer.
func (a *accessAuthorizer) Uniform(c *broker.Client, _ broker.Action) (broker.Decision, bool) {
	if a.byLn[c.Listener] == nil {
		return allowNoACL, true
	}
	return broker.Decision{}, false
}

// clipLog shortens a peer-controlled string for a log line.
func clipLog(s string) string {
	const maxLen = 256
	if len(s) > maxLen {
		return s[:maxLen] + "…"
	}
	return s
}
