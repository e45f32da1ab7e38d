package tlsconf

import (
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

func TestIdentity(t *testing.T) {
	ca := testpki.NewRoot(t, "Identity CA", testpki.P256)
	full := ca.Issue(t, testpki.Options{
		Subject: &pkix.Name{CommonName: "sensor-17", Organization: []string{"Acme, Inc."}, Country: []string{"DE"}},
		DNS:     []string{"sensor-17.devices.example", "alt.example"},
		URIs:    []string{"spiffe://factory.example/line3/sensor-17"},
		Emails:  []string{"ops@example.com"},
	})
	bare := ca.Issue(t, testpki.Options{CN: ""})
	twoURIs := ca.Issue(t, testpki.Options{CN: "x", URIs: []string{"spiffe://a.example/x", "https://b.example/"}})
	badSpiffe := ca.Issue(t, testpki.Options{CN: "x", URIs: []string{"spiffe://A.example/x/"}})
	twoCN := ca.Issue(t, testpki.Options{Subject: &pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: oidCN, Value: "first"}, {Type: oidCN, Value: "second"}}}})
	nulCN := ca.Issue(t, testpki.Options{Subject: &pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: oidCN, Value: asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte("admin\x00evil")}}}}})
	sum := sha256.Sum256(full.Cert.Raw)

	tests := []struct {
		name string
		cert *testpki.Cert
		src  IdentitySource
		want string
		err  bool
	}{
		{"cn", full, IdentityCN, "sensor-17", false},
		{"subject", full, IdentitySubjectDN, `CN=sensor-17,O=Acme\, Inc.,C=DE`, false},
		{"san-dns first", full, IdentitySANDNS, "sensor-17.devices.example", false},
		{"san-uri", full, IdentitySANURI, "spiffe://factory.example/line3/sensor-17", false},
		{"san-email", full, IdentitySANEmail, "ops@example.com", false},
		{"spiffe", full, IdentitySPIFFE, "spiffe://factory.example/line3/sensor-17", false},
		{"sha256", full, IdentitySHA256Fingerprint, hex.EncodeToString(sum[:]), false},
		{"first CN as mosquitto", twoCN, IdentityCN, "first", false},
		{"no CN", bare, IdentityCN, "", true},
		{"no DNS SAN", bare, IdentitySANDNS, "", true},
		{"no spiffe", bare, IdentitySPIFFE, "", true},
		{"spiffe with two URIs", twoURIs, IdentitySPIFFE, "", true},
		{"invalid spiffe", badSpiffe, IdentitySPIFFE, "", true},
		{"NUL in CN", nulCN, IdentityCN, "", true},
		{"none", full, IdentityNone, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Identity(tt.cert.Cert, tt.src)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("Identity = %q, %v; want %q (err %v)", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestIdentityMappingAndBinding(t *testing.T) {
	ca := testpki.NewRoot(t, "Identity CA", testpki.P256)
	dev := ca.Issue(t, testpki.Options{CN: "sensor-17", DNS: []string{"s17.example"}})
	tests := []struct {
		name     string
		mapping  IdentityMapping
		user, id string
		want     Mapped
		err      error
	}{
		{"nothing mapped", IdentityMapping{}, "bob", "c1", Mapped{Username: "bob", ClientID: "c1"}, nil},
		{"use_identity_as_username", IdentityMapping{Username: IdentityCN}, "bob", "c1", Mapped{Username: "sensor-17", UsernameFromCert: true, ClientID: "c1"}, nil},
		{"use_subject_as_username", IdentityMapping{Username: IdentitySubjectDN}, "", "c1", Mapped{Username: "CN=sensor-17", UsernameFromCert: true, ClientID: "c1"}, nil},
		{"client ID from cert", IdentityMapping{ClientID: IdentitySANDNS}, "", "whatever", Mapped{ClientID: "s17.example"}, nil},
		{"bound ok", IdentityMapping{Username: IdentityCN, BindClientID: "{cn}"}, "", "sensor-17", Mapped{Username: "sensor-17", UsernameFromCert: true, ClientID: "sensor-17"}, nil},
		{"bound spoof", IdentityMapping{BindClientID: "{cn}"}, "", "sensor-18", Mapped{}, ErrClientIDMismatch},
		{"bound prefix", IdentityMapping{BindClientID: "dev-{cn}/*"}, "", "dev-sensor-17/a", Mapped{ClientID: "dev-sensor-17/a"}, nil},
		{"bound prefix spoof", IdentityMapping{BindClientID: "dev-{cn}/*"}, "", "dev-sensor-170/a", Mapped{}, ErrClientIDMismatch},
		{"missing field", IdentityMapping{Username: IdentitySANEmail}, "", "c", Mapped{}, ErrNoIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.mapping.Apply(dev.Cert, tt.user, tt.id)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Apply = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if _, err := (IdentityMapping{Username: IdentityCN}).Apply(nil, "u", "c"); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("mapping without a certificate: %v", err)
	}
	for _, bad := range []string{"{cn", "cn}", "{nope}", "a*b"} {
		if err := (ClientIDBinding{Template: bad}).validate(); err == nil {
			t.Errorf("template %q accepted", bad)
		}
	}
}

func TestParseIdentitySource(t *testing.T) {
	for src, name := range identityNames {
		got, err := ParseIdentitySource(name)
		if err != nil || got != src {
			t.Errorf("ParseIdentitySource(%q) = %v, %v", name, got, err)
		}
	}
	if _, err := ParseIdentitySource("nickname"); err == nil {
		t.Error("unknown source accepted")
	}
}

func FuzzFormatDN(f *testing.F) {
	ca := testpki.NewRoot(f, "Fuzz CA", testpki.P256)
	f.Add(ca.Cert.RawSubject)
	f.Add([]byte{0x30, 0x00})
	c := ca.Issue(f, testpki.Options{Subject: &pkix.Name{CommonName: `a,b+"é`, Organization: []string{"x", "y"}}})
	f.Add(c.Cert.RawSubject)
	f.Fuzz(func(t *testing.T, der []byte) {
		s, err := FormatDN(der)
		if err != nil {
			return
		}
		for i := 0; i < len(s); i++ {
			if s[i] < 0x20 || s[i] > 0x7e {
				t.Fatalf("unescaped byte %#x in %q", s[i], s)
			}
		}
	})
}

func TestManagerMapIdentity(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "sensor-9"})
	e.cfg.Identity = IdentityMapping{Username: IdentityCN, BindClientID: "{cn}"}
	srv := serve(t, e.manager(t))
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatal(err)
	}
	sc := serverPeer(t, srv)
	m := srv.m
	got, err := m.MapIdentity(sc.ConnectionState(), "ignored", "sensor-9")
	if err != nil || got.Username != "sensor-9" || !got.UsernameFromCert {
		t.Fatalf("MapIdentity = %+v, %v", got, err)
	}
	if _, err := m.MapIdentity(sc.ConnectionState(), "", "sensor-10"); !errors.Is(err, ErrClientIDMismatch) {
		t.Fatalf("spoofed client ID: %v", err)
	}
}

func TestCheckIdentityValue(t *testing.T) {
	for _, tc := range []struct {
		v  string
		ok bool
	}{
		{"sensor-001", true},
		{"capteur-é-温度", true},
		{"CN=a\\,b,O=Acme", true},
		{"", false},
		{"adm\nin", false},
		{"\x1b[31mred", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"c1\u0085", false},
		{"\u202eadmin", false},
		{"iso\u2066x", false},
		{"\xc3", false},
	} {
		if err := CheckIdentityValue(tc.v); (err == nil) != tc.ok {
			t.Errorf("CheckIdentityValue(%q) = %v, want ok=%v", tc.v, err, tc.ok)
		}
	}
}
