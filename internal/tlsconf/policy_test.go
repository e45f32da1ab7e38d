package tlsconf

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

func TestParseOpenSSLCiphers(t *testing.T) {
	skipInFIPS(t)
	gcm := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}
	tests := []struct {
		spec        string
		insecure    bool
		want        []uint16 // as a set
		wantIgnored int
		wantErr     string
	}{
		{spec: "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
			want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}},
		{spec: "HIGH:!aNULL:!MD5", want: DefaultCipherSuites},
		{spec: "DEFAULT", want: DefaultCipherSuites},
		{spec: "EECDH+AESGCM:EDH+AESGCM", want: gcm},
		{spec: "ECDHE+AESGCM:ECDHE+CHACHA20", want: DefaultCipherSuites},
		{spec: "HIGH:!CHACHA20:@STRENGTH", want: gcm},
		{spec: "ALL:-aRSA", want: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}},
		{spec: "aECDSA+AES256, ECDHE-RSA-CHACHA20-POLY1305", want: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}},
		{spec: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
		{spec: "DHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-CCM", want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}, wantIgnored: 2},
		{spec: "TLS_AES_128_GCM_SHA256:ECDHE-RSA-AES128-GCM-SHA256", want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, wantIgnored: 1},
		{spec: "ECDHE-RSA-AES128-SHA", wantErr: "CBC mode"},
		{spec: "AES128-GCM-SHA256", wantErr: "RSA key exchange"},
		{spec: "DES-CBC3-SHA", wantErr: "3DES"},
		{spec: "RC4-SHA", wantErr: "RC4"},
		{spec: "ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256", insecure: true, want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
		{spec: "MEDIUM", wantErr: "selects no cipher suite"},
		{spec: "NULL:eNULL:EXPORT:LOW", wantErr: "selects no cipher suite"},
		{spec: "BOGUS-CIPHER", wantErr: "unknown cipher"},
		{spec: "", wantErr: "empty"},
		{spec: "HIGH:!", wantErr: "empty element"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, ignored, err := ParseOpenSSLCiphers(tt.spec, tt.insecure)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, b := slices.Clone(got), slices.Clone(tt.want)
			slices.Sort(a)
			slices.Sort(b)
			if !slices.Equal(a, b) {
				var names []string
				for _, id := range got {
					names = append(names, tls.CipherSuiteName(id))
				}
				t.Errorf("got %v", names)
			}
			if len(ignored) != tt.wantIgnored {
				t.Errorf("ignored = %q, want %d entries", ignored, tt.wantIgnored)
			}
		})
	}
}

func TestDefaultsAreSecure(t *testing.T) {
	for _, id := range DefaultCipherSuites {
		if s := suiteByID(id); !s.secure() {
			t.Errorf("default suite %s breaks policy", tls.CipherSuiteName(id))
		}
	}
	if DefaultCurvePreferences[0] != tls.X25519MLKEM768 {
		t.Error("X25519MLKEM768 is not offered first")
	}
	// Every suite Go implements is known to the OpenSSL table.
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if suiteByID(cs.ID).id == 0 && !strings.Contains(cs.Name, "_CBC_SHA256") {
			t.Logf("suite %s not selectable by OpenSSL name", cs.Name)
		}
	}
}

func TestParseTLS13Ciphers(t *testing.T) {
	skipInFIPS(t)
	got, err := ParseTLS13Ciphers("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
	if err != nil || !slices.Equal(got, []uint16{tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := ParseTLS13Ciphers("TLS_AES_128_CCM_SHA256"); err == nil {
		t.Fatal("CCM accepted")
	}
	if _, err := ParseTLS13Ciphers(""); err == nil {
		t.Fatal("empty accepted")
	}
}

func TestParseTLSVersion(t *testing.T) {
	tests := []struct {
		in   string
		want uint16
		err  bool
	}{
		{"tlsv1.2", tls.VersionTLS12, false},
		{"tlsv1.3", tls.VersionTLS13, false},
		{"TLSv1.3", tls.VersionTLS13, false},
		{"1.2", tls.VersionTLS12, false},
		{"tls1.2", tls.VersionTLS12, false},
		{"tlsv1.1", 0, true},
		{"tlsv1", 0, true},
		{"sslv3", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseTLSVersion(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("ParseTLSVersion(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func FuzzParseOpenSSLCiphers(f *testing.F) {
	for _, s := range []string{"HIGH:!aNULL:!MD5", "EECDH+AESGCM:EDH+AESGCM", "ECDHE-RSA-AES128-GCM-SHA256", "ALL:-aRSA:@STRENGTH", "+", "!"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, spec string, insecure bool) {
		ids, _, err := ParseOpenSSLCiphers(spec, insecure)
		if err != nil {
			return
		}
		if len(ids) == 0 {
			t.Fatal("no error and no suites")
		}
		for _, id := range ids {
			s := suiteByID(id)
			if s.id == 0 || s.tls13 || (!insecure && !s.secure()) {
				t.Fatalf("%q selected %s", spec, tls.CipherSuiteName(id))
			}
		}
	})
}

func TestParseCipherSuiteNames(t *testing.T) {
	skipInFIPS(t)
	tests := []struct {
		names    []string
		insecure bool
		want     []uint16
		err      string
	}{
		{names: []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}, want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
		{names: []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}, err: "refused by policy: CBC mode"},
		{names: []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}, insecure: true, want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}},
		{names: []string{"TLS_RSA_WITH_AES_128_GCM_SHA256"}, err: "RSA key exchange"},
		{names: []string{"TLS_AES_128_GCM_SHA256"}, err: "TLS 1.3 suite"},
		{names: []string{"ECDHE-RSA-AES128-GCM-SHA256", "TLS_BOGUS"}, err: `unknown cipher suite "TLS_BOGUS"`},
	}
	for _, tt := range tests {
		got, err := ParseCipherSuiteNames(tt.names, tt.insecure)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v: err = %v, want %q", tt.names, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%v: got %v, %v; want %v", tt.names, got, err, tt.want)
		}
	}
}
