// Package testslapd starts the throw-away OpenLDAP directory of Moat's
// tests: a real slapd (Debian's) on two loopback ports (ldap:// with
// StartTLS, and ldaps://), an mdb database in a temporary directory, the
// memberof overlay, a certificate from a test CA, and a few known entries.
// The LDAP backend's tests and the broker's end-to-end tests share it.
// Tests skip when slapd is not installed.
package testslapd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// The directory's names and passwords. Alice is in the groups operators
// (groupOfNames, member) and viewers (groupOfUniqueNames, uniqueMember),
// bob in viewers, carol in operators; dave's entry lies in a sub-tree
// (ou=contractors) that the DN template reaches only by injection.
const (
	Suffix     = "dc=example,dc=org"
	RootDN     = "cn=admin," + Suffix
	RootPW     = "root-secret"
	ServiceDN  = "cn=moat,ou=services," + Suffix
	ServicePW  = "service-secret"
	PeopleBase = "ou=people," + Suffix
	GroupsBase = "ou=groups," + Suffix
	DNTemplate = "uid=%u," + PeopleBase
	AlicePW    = "alice-pw"
	BobPW      = "bob-pw"
	CarolPW    = "carol-pw"
	ContractPW = "contractor-pw"
)

// slapdConfig is slapd.conf; {{dir}} is the directory's files.
const (
	slapdConfig = `include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
allow bind_anon_dn
pidfile {{dir}}/slapd.pid
argsfile {{dir}}/slapd.args
TLSCACertificateFile {{dir}}/ca.pem
TLSCertificateFile {{dir}}/server.pem
TLSCertificateKeyFile {{dir}}/server.key
database mdb
maxsize 16777216
suffix "` + Suffix + `"
rootdn "` + RootDN + `"
rootpw ` + RootPW + `
directory {{dir}}/db
overlay memberof
access to attrs=userPassword
	by self write
	by anonymous auth
	by * none
access to *
	by users read
	by * none
`
)

// Directory is a running slapd.
type Directory struct {
	LDAPURL  string // ldap:// (StartTLS offered)
	LDAPSURL string
	CAFile   string // the CA of the directory's certificate (for "localhost" and 127.0.0.1)
	peer     *testutil.RunningPeer
}

// Log returns slapd's stats log so far.
func (d *Directory) Log() string { return d.peer.Log() }

// Count returns how many operations of kind ("BIND", "SRCH") slapd has
// logged.
func (d *Directory) Count(kind string) int { return strings.Count(d.Log(), " "+kind+" ") }

// Start starts a directory for the test and loads the entries. It is
// stopped when the test ends.
func Start(t *testing.T) *Directory {
	t.Helper()
	bin, err := exec.LookPath("slapd")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/slapd"); err != nil {
			t.Skip("slapd is not installed (Debian: apt-get install slapd ldap-utils, or make deps); LDAP tests need a real directory")
		}
	}
	dir := t.TempDir()
	ca := testpki.NewRoot(t, "ldap test CA", testpki.P256)
	ca.Issue(t, testpki.ServerOptions()).WriteFiles(t, dir, "server")
	caFile := ca.WritePEM(t, filepath.Join(dir, "ca.pem"))
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(slapdConfig, "{{dir}}", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	// -d 256 keeps slapd in the foreground and logs every operation
	// (stats) to stderr.
	peer := testutil.StartPeer(t, testutil.Peer{
		Name:  "slapd",
		Ports: 2,
		Command: func(ports []int) *exec.Cmd {
			return exec.Command(bin, "-d", "256", "-h", fmt.Sprintf("ldap://127.0.0.1:%d/ ldaps://127.0.0.1:%d/", ports[0], ports[1]), "-f", conf)
		},
	})
	d := &Directory{
		LDAPURL:  "ldap://" + peer.Addr(0),
		LDAPSURL: "ldaps://" + peer.Addr(1),
		CAFile:   caFile,
		peer:     peer,
	}
	d.load(t)
	return d
}

// Stop kills slapd and waits for it.
func (d *Directory) Stop() { d.peer.Stop() }

// Restart stops slapd and starts it again on the same ports with the same
// database: connections made before are gone.
func (d *Directory) Restart(t *testing.T) {
	t.Helper()
	d.peer.Restart(t)
}

// Admin connects as the root DN, for setting up and changing entries. The
// connection is closed when the test ends.
func (d *Directory) Admin(t *testing.T) *goldap.Conn {
	t.Helper()
	c, err := goldap.DialURL(d.LDAPURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind(RootDN, RootPW); err != nil {
		t.Fatal(err)
	}
	return c
}

func (d *Directory) load(t *testing.T) {
	t.Helper()
	c := d.Admin(t)
	add := func(dn string, attrs map[string][]string) {
		t.Helper()
		r := goldap.NewAddRequest(dn, nil)
		for k, v := range attrs {
			r.Attribute(k, v)
		}
		if err := c.Add(r); err != nil {
			t.Fatalf("add %s: %v", dn, err)
		}
	}
	ou := func(name string) {
		add("ou="+name+","+Suffix, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {name}})
	}
	person := func(dn, uid, pw string) {
		add(dn, map[string][]string{
			"objectClass":  {"inetOrgPerson"},
			"uid":          {uid},
			"cn":           {uid},
			"sn":           {uid},
			"userPassword": {pw},
		})
	}
	add(Suffix, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}})
	ou("people")
	ou("groups")
	ou("services")
	add(ServiceDN, map[string][]string{
		"objectClass":  {"organizationalRole", "simpleSecurityObject"},
		"cn":           {"moat"},
		"userPassword": {ServicePW},
	})
	person("uid=alice,"+PeopleBase, "alice", AlicePW)
	person("uid=bob,"+PeopleBase, "bob", BobPW)
	person("uid=carol,"+PeopleBase, "carol", CarolPW)
	add("ou=contractors,"+PeopleBase, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"contractors"}})
	// An entry in a sub-tree, which the DN template reaches only when
	// ",ou=contractors" is injected.
	person("uid=dave,ou=contractors,"+PeopleBase, "dave", ContractPW)
	add("cn=operators,"+GroupsBase, map[string][]string{
		"objectClass": {"groupOfNames"},
		"cn":          {"operators"},
		"member":      {"uid=alice," + PeopleBase, "uid=carol," + PeopleBase},
	})
	add("cn=viewers,"+GroupsBase, map[string][]string{
		"objectClass":  {"groupOfUniqueNames"},
		"cn":           {"viewers"},
		"uniqueMember": {"uid=alice," + PeopleBase, "uid=bob," + PeopleBase},
	})
}

// RemoveMember takes dn out of the groupOfNames cn=name.
func (d *Directory) RemoveMember(t *testing.T, name, dn string) {
	t.Helper()
	c := d.Admin(t)
	r := goldap.NewModifyRequest("cn="+name+","+GroupsBase, nil)
	r.Delete("member", []string{dn})
	if err := c.Modify(r); err != nil {
		t.Fatal(err)
	}
}

// DeleteEntry removes dn.
func (d *Directory) DeleteEntry(t *testing.T, dn string) {
	t.Helper()
	c := d.Admin(t)
	if err := c.Del(goldap.NewDelRequest(dn, nil)); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
