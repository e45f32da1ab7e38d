package ldap

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// The throw-away directory the tests run against: a real OpenLDAP slapd
// on two loopback ports (ldap:// with StartTLS, and ldaps://), an mdb
// database in a temporary directory, the memberof overlay, and a
// certificate from a test CA.
const (
	suffix      = "dc=example,dc=org"
	rootDN      = "cn=admin," + suffix
	rootPW      = "root-secret"
	serviceDN   = "cn=moat,ou=services," + suffix
	servicePW   = "service-secret"
	peopleBase  = "ou=people," + suffix
	groupsBase  = "ou=groups," + suffix
	dnTemplate  = "uid=%u," + peopleBase
	alicePW     = "alice-pw"
	bobPW       = "bob-pw"
	carolPW     = "carol-pw"
	contractPW  = "contractor-pw"
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
suffix "` + suffix + `"
rootdn "` + rootDN + `"
rootpw ` + rootPW + `
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

type directory struct {
	ldapURL  string // ldap:// (StartTLS offered)
	ldapsURL string
	caFile   string
	peer     *testutil.RunningPeer // slapd; its output is the stats log
}

// log returns slapd's stats log so far.
func (d *directory) log() string { return d.peer.Log() }

// count returns how many operations of kind ("BIND", "SRCH") slapd has
// logged.
func (d *directory) count(kind string) int { return strings.Count(d.log(), " "+kind+" ") }

// startSlapd starts a directory for the test and loads the test entries.
// It is stopped when the test ends.
func startSlapd(t *testing.T) *directory {
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
	d := &directory{
		ldapURL:  "ldap://" + peer.Addr(0),
		ldapsURL: "ldaps://" + peer.Addr(1),
		caFile:   caFile,
		peer:     peer,
	}
	d.load(t)
	return d
}

// stop kills slapd and waits for it.
func (d *directory) stop() { d.peer.Stop() }

// restart stops slapd and starts it again on the same ports with the same
// database: connections made before are gone.
func (d *directory) restart(t *testing.T) {
	t.Helper()
	d.peer.Restart(t)
}

// admin connects as the root DN, for setting up and changing entries.
func (d *directory) admin(t *testing.T) *goldap.Conn {
	t.Helper()
	c, err := goldap.DialURL(d.ldapURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind(rootDN, rootPW); err != nil {
		t.Fatal(err)
	}
	return c
}

func (d *directory) load(t *testing.T) {
	t.Helper()
	c := d.admin(t)
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
		add("ou="+name+","+suffix, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {name}})
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
	add(suffix, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}})
	ou("people")
	ou("groups")
	ou("services")
	add(serviceDN, map[string][]string{
		"objectClass":  {"organizationalRole", "simpleSecurityObject"},
		"cn":           {"moat"},
		"userPassword": {servicePW},
	})
	person("uid=alice,"+peopleBase, "alice", alicePW)
	person("uid=bob,"+peopleBase, "bob", bobPW)
	person("uid=carol,"+peopleBase, "carol", carolPW)
	add("ou=contractors,"+peopleBase, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"contractors"}})
	// An entry in a sub-tree, which the DN template reaches only when
	// ",ou=contractors" is injected.
	person("uid=dave,ou=contractors,"+peopleBase, "dave", contractPW)
	add("cn=operators,"+groupsBase, map[string][]string{
		"objectClass": {"groupOfNames"},
		"cn":          {"operators"},
		"member":      {"uid=alice," + peopleBase, "uid=carol," + peopleBase},
	})
	add("cn=viewers,"+groupsBase, map[string][]string{
		"objectClass":  {"groupOfUniqueNames"},
		"cn":           {"viewers"},
		"uniqueMember": {"uid=alice," + peopleBase, "uid=bob," + peopleBase},
	})
}

// removeMember takes dn out of group cn=name.
func (d *directory) removeMember(t *testing.T, name, dn string) {
	t.Helper()
	c := d.admin(t)
	r := goldap.NewModifyRequest("cn="+name+","+groupsBase, nil)
	r.Delete("member", []string{dn})
	if err := c.Modify(r); err != nil {
		t.Fatal(err)
	}
}

// deleteEntry removes dn.
func (d *directory) deleteEntry(t *testing.T, dn string) {
	t.Helper()
	c := d.admin(t)
	if err := c.Del(goldap.NewDelRequest(dn, nil)); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
