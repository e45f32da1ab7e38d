package tlsconf

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestSubjectDNMatchesOpenSSL checks SubjectDN against
// `openssl x509 -noout -subject -nameopt RFC2253`, the format Mosquitto's
// use_subject_as_username produces.
func TestSubjectDNMatchesOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ca := testpki.NewRoot(t, "DN test CA", testpki.P256)
	bmp := asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagBMPString, Bytes: []byte{0, 'd', 0, 0xe9, 0, 'v'}}
	tests := []struct {
		name string
		subj pkix.Name
	}{
		{"simple", pkix.Name{CommonName: "sensor-1", Organization: []string{"Factory"}, OrganizationalUnit: []string{"line 3"}, Country: []string{"DE"}}},
		{"specials", pkix.Name{CommonName: `a,b+c"d\e<f>g;h=i`, Organization: []string{"#hash", " lead", "trail "}}},
		{"unicode", pkix.Name{CommonName: "capteur-é-温度", Locality: []string{"Köln"}}},
		{"email and dc", pkix.Name{CommonName: "dev", ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "dev@example.com"},
			{Type: asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}, Value: "example"},
		}}},
		{"unknown oid", pkix.Name{CommonName: "x", ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: "opaque"},
		}}},
		{"bmpstring", pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: bmp}}}},
		{"serial and multi", pkix.Name{CommonName: "x", SerialNumber: "0042", Province: []string{"BY"}, StreetAddress: []string{"Main St 1"}, PostalCode: []string{"80331"}}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			subj := tt.subj
			c := ca.Issue(t, testpki.Options{Subject: &subj})
			got, err := SubjectDN(c.Cert)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".pem")
			if err := os.WriteFile(p, c.PEM(), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(openssl, "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", p).Output()
			if err != nil {
				t.Fatal(err)
			}
			want := strings.TrimSuffix(strings.TrimPrefix(string(out), "subject="), "\n")
			if got != want {
				t.Errorf("SubjectDN = %q\nopenssl   = %q", got, want)
			}
		})
	}
}

func TestMultiValuedRDN(t *testing.T) {
	// CN=a+O=b as one RDN, then C=DE.
	name := pkix.RDNSequence{
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 6}, Value: "DE"}},
		{{Type: oidCN, Value: "a"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: "b"}},
	}
	der, err := asn1.Marshal(name)
	if err != nil {
		t.Fatal(err)
	}
	got, err := FormatDN(der)
	if err != nil {
		t.Fatal(err)
	}
	if want := "O=b+CN=a,C=DE"; got != want {
		t.Errorf("FormatDN = %q, want %q", got, want)
	}
	_ = x509.Certificate{}
}
