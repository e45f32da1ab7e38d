package ldap

import (
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/testutil/testslapd"
)

// The throw-away directory the tests run against: a real OpenLDAP slapd
// (internal/testutil/testslapd, shared with the broker's end-to-end
// tests). These names keep the tests short.
const (
	suffix     = testslapd.Suffix
	rootDN     = testslapd.RootDN
	serviceDN  = testslapd.ServiceDN
	servicePW  = testslapd.ServicePW
	peopleBase = testslapd.PeopleBase
	groupsBase = testslapd.GroupsBase
	dnTemplate = testslapd.DNTemplate
	alicePW    = testslapd.AlicePW
	bobPW      = testslapd.BobPW
	carolPW    = testslapd.CarolPW
	contractPW = testslapd.ContractPW
)

type directory struct {
	*testslapd.Directory
	ldapURL  string // ldap:// (StartTLS offered)
	ldapsURL string
	caFile   string
}

// startSlapd starts a directory for the test and loads the test entries.
// It is stopped when the test ends.
func startSlapd(t *testing.T) *directory {
	t.Helper()
	d := testslapd.Start(t)
	return &directory{Directory: d, ldapURL: d.LDAPURL, ldapsURL: d.LDAPSURL, caFile: d.CAFile}
}

func (d *directory) log() string           { return d.Log() }
func (d *directory) count(kind string) int { return d.Count(kind) }
func (d *directory) stop()                 { d.Stop() }
func (d *directory) restart(t *testing.T)  { d.Restart(t) }

func (d *directory) admin(t *testing.T) *goldap.Conn { return d.Admin(t) }

func (d *directory) removeMember(t *testing.T, name, dn string) { d.RemoveMember(t, name, dn) }

func (d *directory) deleteEntry(t *testing.T, dn string) { d.DeleteEntry(t, dn) }
