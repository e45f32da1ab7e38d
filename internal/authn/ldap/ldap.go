// Package ldap authenticates MQTT clients against an LDAP directory
// (OpenLDAP, 389 Directory Server, Active Directory) by a simple bind as
// the user, and maps the user's directory groups to authorization groups.
//
// The user's DN comes either from a template ("uid=%u,ou=people,...", the
// username escaped as an RFC 4514 attribute value) or from a search made
// with a service account (the username escaped as an RFC 4515 filter
// value; exactly one entry must match). The connection is always
// encrypted (LDAPS or StartTLS) unless the configuration says, in so many
// words, that it may be plaintext.
//
// Connections: the service account's searches share a small bounded pool
// of connections that stay bound as the service account. A user's bind
// always uses a new, short-lived connection that is closed afterwards, so
// a pooled connection never carries a user's identity and no rebind can be
// forgotten or raced. Concurrent user binds are bounded too.
//
// A Backend is safe for concurrent use. The caller must Close it.
package ldap

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/authn"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout        = 5 * time.Second
	DefaultPoolSize       = 4
	DefaultMaxBinds       = 16
	DefaultUserFilter     = "(uid=%u)"
	DefaultGroupFilter    = "(|(member=%d)(uniqueMember=%d))"
	DefaultGroupAttribute = "cn"
)

// Limits on what a client controls.
const (
	maxUsername = 256  // bytes
	maxPassword = 1024 // bytes
	maxGroups   = 256  // groups of one user
)

// denyReason is the reason for both a wrong password and an unknown user,
// so that the audit trail cannot be used to tell them apart either.
const denyReason = "ldap: invalid username or password"

// Config configures a Backend. Exactly one of BindDNTemplate and
// Search.Base must be set. New does not modify the caller's Config.
type Config struct {
	// Name names the backend in logs and results. Default "ldap".
	Name string
	// URL is the directory: ldaps://host[:636] or ldap://host[:389].
	// Required. ldap:// needs StartTLS or InsecurePlaintext.
	URL string
	// StartTLS upgrades an ldap:// connection with StartTLS before
	// anything else is sent. Not allowed with ldaps://.
	StartTLS bool
	// InsecurePlaintext allows an ldap:// URL without StartTLS: passwords
	// then cross the network in clear text. Default false; New logs a
	// warning when it is set.
	InsecurePlaintext bool
	// CAFile is a PEM bundle of the CAs that may sign the directory's
	// certificate. Default: RootCAs, else the system roots.
	CAFile string
	// RootCAs, when CAFile is empty, are the CAs trusted for the
	// directory's certificate. Default: the system roots.
	RootCAs *x509.CertPool
	// ServerName is the name checked in the directory's certificate.
	// Default: the URL's host.
	ServerName string

	// BindDNTemplate is the user's DN with %u for the username, e.g.
	// "uid=%u,ou=people,dc=example,dc=org".
	BindDNTemplate string
	// Search finds the user's DN with a service account (search then
	// bind). Its BindDN also serves group searches and Recheck in
	// template mode.
	Search Search
	// Group maps directory groups to authorization groups.
	Group Group

	// Timeout bounds the connect (TCP and TLS) and each exchange with the
	// directory (a bind with its group lookups, a search). Default
	// DefaultTimeout. The request's context can only shorten it.
	Timeout time.Duration
	// PoolSize bounds the service account's connections. Default
	// DefaultPoolSize.
	PoolSize int
	// MaxBinds bounds concurrent user binds (each on its own
	// connection). Default DefaultMaxBinds.
	MaxBinds int
	// Logger receives warnings. Default slog.Default().
	Logger *slog.Logger
}

// Search configures search-then-bind and the service account.
type Search struct {
	// Base is where users are searched (subtree). Setting it selects
	// search-then-bind.
	Base string
	// Filter finds one user; %u is the username escaped for a filter.
	// Default DefaultUserFilter.
	Filter string
	// BindDN is the service account. Required for search-then-bind and
	// Recheck; optional in template mode (then group lookups run as the
	// user).
	BindDN string
	// BindPasswordFile holds the service account's password (trailing
	// newlines are removed). It is read by New.
	BindPasswordFile string
	// BindPasswordEnv names an environment variable holding the service
	// account's password, when BindPasswordFile is empty.
	BindPasswordEnv string
}

// Group configures group membership. With neither Base nor UserAttribute
// set, users have no groups.
type Group struct {
	// Base is where groups are searched (subtree). Empty: no group search.
	Base string
	// Filter finds the user's groups; %d is the user's DN and %u the
	// username, both escaped for a filter. Default DefaultGroupFilter.
	Filter string
	// Attribute of a group entry that names the group. Default
	// DefaultGroupAttribute.
	Attribute string
	// UserAttribute is an attribute of the user's entry listing group DNs
	// (memberOf); each group is named by the value of its DN's first RDN.
	// Empty: not used.
	UserAttribute string
	// Map, when not nil, renames directory groups to authorization groups;
	// groups it does not list are left out.
	Map map[string]string
}

// Backend authenticates against one directory. It implements
// authn.Backend.
type Backend struct {
	name       string
	addr       string // host:port
	ldaps      bool
	startTLS   bool
	tls        *tls.Config
	template   string
	search     Search
	servicePW  authn.Password
	group      Group
	timeout    time.Duration
	log        *slog.Logger
	dummyDN    string
	pool       *pool // nil without a service account
	binds      chan struct{}
	hasService bool
	closed     atomic.Bool
}

var _ authn.Backend = (*Backend)(nil)

// New validates cfg, reads the service account's password and returns a
// Backend. It reports every problem at once. It does not contact the
// directory: a directory that is down at start-up makes Authenticate fail
// closed, not New.
func New(cfg Config) (*Backend, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("ldap: "+format, args...)) }

	b := &Backend{
		name:     cfg.Name,
		startTLS: cfg.StartTLS,
		template: cfg.BindDNTemplate,
		search:   cfg.Search,
		group:    cfg.Group,
		timeout:  cfg.Timeout,
		log:      cfg.Logger,
	}
	if b.name == "" {
		b.name = "ldap"
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.timeout == 0 {
		b.timeout = DefaultTimeout
	} else if b.timeout < 0 {
		bad("timeout %v is negative", cfg.Timeout)
	}
	poolSize, maxBinds := cfg.PoolSize, cfg.MaxBinds
	if poolSize == 0 {
		poolSize = DefaultPoolSize
	}
	if maxBinds == 0 {
		maxBinds = DefaultMaxBinds
	}
	if poolSize < 0 || maxBinds < 0 {
		bad("pool size and max binds must not be negative")
	}

	// Where and how to connect.
	u, err := url.Parse(cfg.URL)
	switch {
	case cfg.URL == "":
		bad("url is required (ldaps://host or ldap://host with starttls)")
	case err != nil:
		bad("url %q: %v", cfg.URL, err)
	case u.Scheme != "ldaps" && u.Scheme != "ldap":
		bad("url %q: scheme must be ldaps or ldap", cfg.URL)
	case u.Hostname() == "":
		bad("url %q has no host", cfg.URL)
	case u.Path != "" && u.Path != "/" || u.RawQuery != "":
		bad("url %q: a DN, attributes or filter in the URL are not used; put them in the search and group settings", cfg.URL)
	default:
		b.ldaps = u.Scheme == "ldaps"
		port := u.Port()
		if port == "" {
			port = "389"
			if b.ldaps {
				port = "636"
			}
		}
		b.addr = net.JoinHostPort(u.Hostname(), port)
		switch {
		case b.ldaps && cfg.StartTLS:
			bad("url %q is already TLS: starttls is for ldap:// URLs", cfg.URL)
		case !b.ldaps && !cfg.StartTLS && !cfg.InsecurePlaintext:
			bad("url %q is plaintext: use ldaps://, or set starttls, or (never across a network you do not own) insecure_plaintext", cfg.URL)
		case cfg.InsecurePlaintext && (b.ldaps || cfg.StartTLS):
			bad("insecure_plaintext contradicts ldaps:// and starttls: drop it")
		}
	}
	b.tls = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs, ServerName: cfg.ServerName}
	if b.tls.ServerName == "" && u != nil {
		b.tls.ServerName = u.Hostname()
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			bad("ca_file: %v", err)
		} else {
			b.tls.RootCAs = x509.NewCertPool()
			if !b.tls.RootCAs.AppendCertsFromPEM(pem) {
				bad("ca_file %s holds no PEM certificate", cfg.CAFile)
			}
		}
	}

	// How to find the user.
	switch {
	case cfg.BindDNTemplate != "" && cfg.Search.Base != "":
		bad("set bind_dn_template or search.base, not both")
	case cfg.BindDNTemplate == "" && cfg.Search.Base == "":
		bad("set bind_dn_template (bind as uid=%%u,...) or search.base (search then bind)")
	case cfg.BindDNTemplate != "":
		if !strings.Contains(cfg.BindDNTemplate, "%u") {
			bad("bind_dn_template %q has no %%u for the username", cfg.BindDNTemplate)
		} else if _, err := goldap.ParseDN(strings.ReplaceAll(cfg.BindDNTemplate, "%u", "x")); err != nil {
			bad("bind_dn_template %q is not a DN: %v", cfg.BindDNTemplate, err)
		}
	default:
		if b.search.Filter == "" {
			b.search.Filter = DefaultUserFilter
		}
		if !strings.Contains(b.search.Filter, "%u") {
			bad("search.filter %q has no %%u for the username", b.search.Filter)
		} else if _, err := goldap.CompileFilter(strings.ReplaceAll(b.search.Filter, "%u", "x")); err != nil {
			bad("search.filter %q: %v", b.search.Filter, err)
		}
		if cfg.Search.BindDN == "" {
			bad("search.base needs search.bind_dn, the service account that searches")
		}
		// A DN under the search base that no entry has: an unknown
		// user's password is bound against it, so that the directory
		// does the same work as for a wrong password.
		var r [16]byte
		_, _ = rand.Read(r[:])
		b.dummyDN = "cn=moat-no-such-user-" + hex.EncodeToString(r[:]) + "," + cfg.Search.Base
	}

	// The service account.
	if cfg.Search.BindDN != "" {
		b.hasService = true
		var pw []byte
		var readErr error
		switch {
		case cfg.Search.BindPasswordFile != "":
			pw, readErr = os.ReadFile(cfg.Search.BindPasswordFile)
			if readErr != nil {
				bad("search.bind_password_file: %v", readErr)
			}
			pw = []byte(strings.TrimRight(string(pw), "\r\n"))
		case cfg.Search.BindPasswordEnv != "":
			pw = []byte(os.Getenv(cfg.Search.BindPasswordEnv))
		}
		if len(pw) == 0 && readErr == nil {
			bad("search.bind_dn %q needs a password: set search.bind_password_file (or bind_password_env) to a non-empty secret", cfg.Search.BindDN)
		}
		b.servicePW = authn.NewPassword(pw)
	} else if cfg.Search.BindPasswordFile != "" || cfg.Search.BindPasswordEnv != "" {
		bad("a service account password is set but search.bind_dn is empty")
	}

	// Groups.
	if b.group.Base != "" {
		if b.group.Filter == "" {
			b.group.Filter = DefaultGroupFilter
		}
		if b.group.Attribute == "" {
			b.group.Attribute = DefaultGroupAttribute
		}
		f := strings.NewReplacer("%u", "x", "%d", "x").Replace(b.group.Filter)
		if _, err := goldap.CompileFilter(f); err != nil {
			bad("group.filter %q: %v", b.group.Filter, err)
		}
	} else if cfg.Group.Filter != "" || cfg.Group.Attribute != "" {
		bad("group.filter and group.attribute need group.base")
	}
	if cfg.Group.Map != nil {
		b.group.Map = make(map[string]string, len(cfg.Group.Map))
		for k, v := range cfg.Group.Map {
			b.group.Map[k] = v
		}
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.InsecurePlaintext {
		b.log.Warn("ldap: plaintext LDAP: passwords cross the network unencrypted", "backend", b.name, "url", cfg.URL)
	}
	b.binds = make(chan struct{}, maxBinds)
	if b.hasService {
		b.pool = newPool(b, poolSize)
	}
	return b, nil
}

// Name implements authn.Backend.
func (b *Backend) Name() string { return b.name }

// Close closes the pooled connections. Authenticate and Recheck fail
// (closed) afterwards.
func (b *Backend) Close() error {
	b.closed.Store(true)
	if b.pool != nil {
		b.pool.close()
	}
	return nil
}

// Authenticate binds as the user named in req. A request without a
// username or without a password field is NotMine (a certificate backend
// may know it); an empty password is denied before anything is sent (an
// LDAP bind without a password is an anonymous bind, which succeeds). A
// wrong password and an unknown user get the same Deny after the same
// exchanges with the directory. A directory that cannot be reached, or
// refuses the service account, is an error wrapping authn.ErrUnavailable.
func (b *Backend) Authenticate(ctx context.Context, req *authn.Request) (authn.Result, error) {
	deny := func(reason string) (authn.Result, error) {
		return authn.Result{Verdict: authn.Deny, Reason: reason}, nil
	}
	if b.closed.Load() {
		return authn.Result{}, b.unavailable("authenticate", errClosed)
	}
	if req.Username == "" || !req.HasPassword {
		return authn.Result{Verdict: authn.NotMine, Reason: "ldap: no username and password"}, nil
	}
	if req.Password.Empty() {
		return deny("ldap: empty password refused (it would be an anonymous bind)")
	}
	if !validUsername(req.Username) {
		return deny(fmt.Sprintf("ldap: username not acceptable (more than %d bytes, not UTF-8, or control characters)", maxUsername))
	}
	if len(req.Password.Bytes()) > maxPassword {
		return deny(fmt.Sprintf("ldap: password longer than %d bytes", maxPassword))
	}

	var dn string
	var entry *goldap.Entry
	if b.template != "" {
		dn = b.userDN(req.Username)
	} else {
		var err error
		entry, err = b.findUser(ctx, req.Username)
		if err != nil {
			return authn.Result{}, err
		}
		if entry != nil {
			dn = entry.DN
		}
	}

	target := dn
	if target == "" {
		target = b.dummyDN
	}
	var groups []string
	refused, err := b.userBind(ctx, target, req.Password, func(c *goldap.Conn) error {
		if dn == "" {
			return nil
		}
		var err error
		groups, err = b.groupsOf(ctx, c, dn, req.Username, entry)
		return err
	})
	switch {
	case err != nil:
		return authn.Result{}, err
	case dn == "" || goldap.IsErrorWithCode(refused, goldap.LDAPResultInvalidCredentials):
		return deny(denyReason)
	case refused != nil:
		return deny("ldap: the directory refused the bind: " + refused.Error())
	case len(groups) > maxGroups:
		return deny(fmt.Sprintf("ldap: %s is in more than %d groups", dn, maxGroups))
	}
	return authn.Result{
		Verdict:    authn.Allow,
		Reason:     "ldap: bound as " + dn,
		Groups:     groups,
		Attributes: map[string]string{"ldap_dn": dn},
	}, nil
}

// Recheck looks the user up again with the service account, for sessions
// that are already connected: it reports whether the user still exists
// (an entry at the template's DN, or exactly one search match) and the
// user's current groups. It needs a service account (search.bind_dn). An
// error wraps authn.ErrUnavailable when the directory could not answer.
func (b *Backend) Recheck(ctx context.Context, username string) (groups []string, exists bool, err error) {
	if b.closed.Load() {
		return nil, false, b.unavailable("recheck", errClosed)
	}
	if !b.hasService {
		return nil, false, errors.New("ldap: recheck needs a service account: set search.bind_dn and its password file")
	}
	if username == "" || !validUsername(username) {
		return nil, false, nil
	}
	var dn string
	var entry *goldap.Entry
	if b.template != "" {
		dn = b.userDN(username)
		attrs := []string{"1.1"}
		if b.group.UserAttribute != "" {
			attrs = []string{b.group.UserAttribute}
		}
		err := b.pool.do(ctx, func(c *goldap.Conn) error {
			res, err := c.Search(goldap.NewSearchRequest(dn, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
				1, 0, false, "(objectClass=*)", attrs, nil))
			if goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
				return nil
			}
			if err != nil {
				return err
			}
			if len(res.Entries) == 1 {
				entry = res.Entries[0]
			}
			return nil
		})
		if err != nil {
			return nil, false, b.unavailable("recheck "+dn, err)
		}
	} else {
		entry, err = b.findUser(ctx, username)
		if err != nil {
			return nil, false, err
		}
	}
	if entry == nil {
		return nil, false, nil
	}
	dn = entry.DN
	groups, err = b.groupsOf(ctx, nil, dn, username, entry)
	if err != nil {
		return nil, false, err
	}
	if len(groups) > maxGroups {
		return nil, false, fmt.Errorf("ldap: %s is in more than %d groups", dn, maxGroups)
	}
	return groups, true, nil
}

func validUsername(u string) bool {
	if len(u) > maxUsername || !utf8.ValidString(u) {
		return false
	}
	return !strings.ContainsFunc(u, unicode.IsControl)
}

// userDN fills the template with the username escaped as an RFC 4514
// attribute value.
func (b *Backend) userDN(username string) string {
	return strings.ReplaceAll(b.template, "%u", goldap.EscapeDN(username))
}

// findUser searches for the user as the service account. It returns nil
// when no entry, or more than one, matches.
func (b *Backend) findUser(ctx context.Context, username string) (*goldap.Entry, error) {
	filter := strings.ReplaceAll(b.search.Filter, "%u", goldap.EscapeFilter(username))
	attrs := []string{"1.1"} // no attributes, only the DN
	if b.group.UserAttribute != "" {
		attrs = []string{b.group.UserAttribute}
	}
	var entries []*goldap.Entry
	err := b.pool.do(ctx, func(c *goldap.Conn) error {
		res, err := c.Search(goldap.NewSearchRequest(b.search.Base, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
			2, 0, false, filter, attrs, nil))
		if res != nil {
			entries = res.Entries
		}
		if goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, b.unavailable("user search under "+b.search.Base, err)
	}
	switch len(entries) {
	case 0:
		return nil, nil
	case 1:
		return entries[0], nil
	}
	b.log.Warn("ldap: search.filter matches more than one entry for a username: refusing it; make the filter unique",
		"backend", b.name, "filter", b.search.Filter, "first", entries[0].DN, "second", entries[1].DN)
	return nil, nil
}

// groupsOf returns the user's authorization groups, sorted. It searches as
// the service account when there is one, else on userConn (bound as the
// user).
func (b *Backend) groupsOf(ctx context.Context, userConn *goldap.Conn, dn, username string, entry *goldap.Entry) ([]string, error) {
	if b.group.Base == "" && b.group.UserAttribute == "" {
		return nil, nil
	}
	var names []string
	lookup := func(c *goldap.Conn) error {
		names = names[:0]
		if a := b.group.UserAttribute; a != "" {
			var vals []string
			if entry != nil {
				vals = entry.GetEqualFoldAttributeValues(a)
			} else {
				res, err := c.Search(goldap.NewSearchRequest(dn, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
					1, 0, false, "(objectClass=*)", []string{a}, nil))
				if err != nil {
					return err
				}
				if len(res.Entries) == 1 {
					vals = res.Entries[0].GetEqualFoldAttributeValues(a)
				}
			}
			for _, v := range vals {
				names = append(names, rdnValue(v))
			}
		}
		if b.group.Base != "" {
			filter := strings.NewReplacer("%u", goldap.EscapeFilter(username), "%d", goldap.EscapeFilter(dn)).Replace(b.group.Filter)
			res, err := c.Search(goldap.NewSearchRequest(b.group.Base, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
				maxGroups+1, 0, false, filter, []string{b.group.Attribute}, nil))
			if err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
				return err
			}
			for _, e := range res.Entries {
				names = append(names, e.GetEqualFoldAttributeValues(b.group.Attribute)...)
			}
		}
		return nil
	}
	var err error
	if b.pool != nil {
		err = b.pool.do(ctx, lookup)
	} else {
		err = lookup(userConn)
	}
	if err != nil {
		return nil, b.unavailable("group lookup for "+dn, err)
	}
	if b.group.Map != nil {
		mapped := names[:0]
		for _, n := range names {
			if m, ok := b.group.Map[n]; ok {
				mapped = append(mapped, m)
			}
		}
		names = mapped
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// rdnValue names a group by its DN's first RDN value ("cn=ops,ou=groups"
// gives "ops"); a value that is not a DN is returned as it is.
func rdnValue(v string) string {
	d, err := goldap.ParseDN(v)
	if err != nil || len(d.RDNs) == 0 || len(d.RDNs[0].Attributes) == 0 {
		return v
	}
	return d.RDNs[0].Attributes[0].Value
}

// unavailable wraps err as authn.ErrUnavailable. A refused service account
// is reported as the operator's mistake.
func (b *Backend) unavailable(what string, err error) error {
	if errors.Is(err, authn.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: ldap %s: %s: %w", authn.ErrUnavailable, b.name, what, err)
}
