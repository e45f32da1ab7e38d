package config

import (
	"errors"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsSecure(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Listeners) != 1 {
		t.Fatalf("want one listener, got %d", len(c.Listeners))
	}
	l := c.Listeners[0]
	if l.Address != ":8883" || l.Transport != TransportTLS || l.AllowAnonymous {
		t.Errorf("default listener = %s %s anonymous=%v, want :8883 tls anonymous=false", l.Address, l.Transport, l.AllowAnonymous)
	}
	if l.TLS.ClientAuth != ClientAuthRequired || l.TLS.Cert != "" || l.TLS.Key != "" || l.TLS.ClientCA != "" {
		t.Errorf("default TLS = %+v, want client certificates required and the built-in CA", l.TLS)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("the default configuration warns: %q", w)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		ok   bool
	}{
		{"4096", 4096, true}, {"1MiB", 1 << 20, true}, {"256KB", 256000, true}, {"256 KiB", 256 << 10, true},
		{"1GB", 1e9, true}, {"2GiB", 2 << 30, true}, {"0", 0, true}, {"20B", 20, true},
		{"1Mb", 0, false}, {"-1", 0, false}, {"", 0, false}, {"1.5MiB", 0, false}, {"99999999999GiB", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"10s", 10 * time.Second, true}, {"2h", 2 * time.Hour, true}, {"14d", 14 * day, true}, {"1w", 7 * day, true},
		{"1w2d3h", 9*day + 3*time.Hour, true}, {"1m", time.Minute, true}, {"0", 0, true}, {"1h30m", 90 * time.Minute, true},
		{"-5s", 0, false}, {"3x", 0, false}, {"", 0, false}, {"d", 0, false}, {"99999999999999w", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseDuration(tc.in)
			if (err == nil) != tc.ok || got.D() != tc.want {
				t.Errorf("ParseDuration(%q) = %v, %v; want %v, ok=%v", tc.in, got.D(), err, tc.want, tc.ok)
			}
		})
	}
}

// persistent_client_expiration: N followed by h, d, w, m (month = 30 days)
// or y (365 days), as mosquitto.conf(5) documents.
func TestPersistentClientExpiration(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"2h", 2 * time.Hour, true}, {"14d", 14 * day, true}, {"1w", 7 * day, true}, {"1m", 30 * day, true}, {"1y", 365 * day, true},
		{"1", 0, false}, {"0d", 0, false}, {"-1h", 0, false}, {"2x", 0, false}, {"h", 0, false}, {"1.5d", 0, false},
		{"99999999999999y", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseExpiration(tc.in)
			if (err == nil) != tc.ok || got.D() != tc.want {
				t.Errorf("parseExpiration(%q) = %v, %v; want %v, ok=%v", tc.in, got.D(), err, tc.want, tc.ok)
			}
		})
	}
}

func TestDetectFormat(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       Format
	}{
		{"moat.yaml", "listener 1883", FormatYAML},
		{"moat.YML", "", FormatYAML},
		{"mosquitto.conf", "listeners:", FormatMosquitto},
		{"config", "# comment\n\nlisteners:\n  - address: :8883\n", FormatYAML},
		{"config", "---\nlog: {level: debug}\n", FormatYAML},
		{"config", "{\"listeners\": []}", FormatYAML},
		{"config", "# comment\nlistener 8883\ncafile /x\n", FormatMosquitto},
		{"config", "", FormatMosquitto},
		{"config", "log_dest stdout", FormatMosquitto},
	} {
		if got := DetectFormat(tc.name, []byte(tc.data)); got != tc.want {
			t.Errorf("DetectFormat(%q, %q) = %s, want %s", tc.name, tc.data, got, tc.want)
		}
	}
}

// Errors carry file, line and key, and every problem is reported at once.
func TestErrorsCarryPosition(t *testing.T) {
	_, err := Parse("moat.conf", []byte("listener 1883\n\n\n\n\n\n\n\n\n\n\nfoo bar\nallow_anonymous maybe\n"))
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.HasPrefix(err.Error(), "config: 2 problems:") || !strings.Contains(err.Error(), `moat.conf:12: unknown key "foo"`) {
		t.Errorf("error text:\n%v", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.File != "moat.conf" || e.Line != 12 || e.Key != "foo" {
		t.Errorf("errors.As gave %+v", e)
	}
}

func TestUnsupportedKeysAreErrors(t *testing.T) {
	for _, key := range []string{"psk_file /x", "psk_hint h", "plugin /x.so", "auth_plugin /x.so",
		"auth_opt_db x", "plugin_opt_x y", "connection b", "address 1.2.3.4", "topic # both", "bridge_cafile /x",
		"http_dir /www", "bind_interface eth0", "mount_point m/", "tls_engine x"} {
		t.Run(key, func(t *testing.T) {
			_, err := Parse("m.conf", []byte("listener 1883\n"+key+"\n"))
			k, _, _ := strings.Cut(key, " ")
			if err == nil || !strings.Contains(err.Error(), "m.conf:2: "+k+" is not supported yet") {
				t.Errorf("got %v", err)
			}
		})
	}
}

// Mosquitto 2.0's anonymous rules: false once any listener or port line
// exists, unless set; per_listener_settings makes it per listener; a file
// without listeners is "local only" and anonymous.
func TestAllowAnonymousRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf string
		want []bool
	}{
		{"no listener: local only", "", []bool{true, true}},
		{"no listener, explicit false: still local only", "allow_anonymous false\n", []bool{true, true}},
		{"listener, unset", "listener 1883\n", []bool{false}},
		{"global before listener", "allow_anonymous true\nlistener 1883\n", []bool{true}},
		{"global after listeners applies to all", "listener 1883\nallow_anonymous true\nlistener 1884\n", []bool{true, true}},
		{"per listener", "per_listener_settings true\nlistener 1883\nallow_anonymous true\nlistener 1884\n", []bool{true, false}},
		{"per listener, before any listener: default listener only", "per_listener_settings true\nallow_anonymous true\nlistener 1884\n", []bool{false}},
		{"port line ends local only", "port 1884\n", []bool{false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("m.conf", []byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			var got []bool
			for _, l := range c.Listeners {
				got = append(got, l.AllowAnonymous)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("anonymous per listener = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPerListenerSettingsMustComeFirst(t *testing.T) {
	_, err := Parse("m.conf", []byte("allow_anonymous true\nper_listener_settings true\nlistener 1883\n"))
	if err == nil || !strings.Contains(err.Error(), "m.conf:2: per_listener_settings must be set before") {
		t.Errorf("got %v", err)
	}
}

// include_dir reads *.conf in Mosquitto's order (case-insensitive, upper
// case first), each file starting on the default listener.
func TestIncludeDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"b.conf": "listener 1006 127.0.0.1\n", "B.conf": "listener 1005 127.0.0.1\n", "a.conf": "listener 1004 127.0.0.1\n",
		"A.conf": "listener 1003 127.0.0.1\n", "01.conf": "listener 1002 127.0.0.1\n", "00.conf": "listener 1001 127.0.0.1\n",
		"skip.txt": "listener 1\n", "z.conf": "max_connections 7\nfoo\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	main := "listener 1000 127.0.0.1\ninclude_dir " + filepath.ToSlash(dir) + "\nmax_connections 3\n"
	_, err := Parse("main.conf", []byte(main))
	// z.conf's unknown key is reported with the included file's name and line.
	if err == nil || !strings.Contains(err.Error(), filepath.ToSlash(dir)+"/z.conf:2: unknown key \"foo\"") {
		t.Fatalf("got %v", err)
	}
	files["z.conf"] = "max_connections 7\n"
	os.WriteFile(filepath.Join(dir, "z.conf"), []byte(files["z.conf"]), 0o600)
	c, err := Parse("main.conf", []byte(main))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range c.Listeners {
		got = append(got, l.Address)
	}
	want := []string{"127.0.0.1:1000", "127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1004", "127.0.0.1:1005", "127.0.0.1:1006", ":1883"}
	if !slices.Equal(got, want) {
		t.Errorf("listeners = %v, want %v", got, want)
	}
	// The main file's max_connections (after include_dir) stays on its
	// listener; z.conf's went to the default listener and started it.
	if c.Listeners[0].MaxConnections != 3 || c.Listeners[7].MaxConnections != 7 {
		t.Errorf("max_connections = %d and %d, want 3 and 7", c.Listeners[0].MaxConnections, c.Listeners[7].MaxConnections)
	}
}

func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		want       []string // substrings, in any warning
		none       bool
	}{
		{"plain on network", "listeners:\n  - {address: \":1883\", transport: tcp}\n", []string{"plain MQTT without TLS"}, false},
		{"plain websocket on network", "listeners:\n  - {address: \"10.0.0.1:8080\", transport: ws}\n", []string{"plain MQTT over WebSocket"}, false},
		{"anonymous on network", "listeners:\n  - {address: \":8883\", allow_anonymous: true}\n", []string{"anonymous clients are allowed from the network"}, false},
		{"loopback plain anonymous is fine", "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp, allow_anonymous: true}\n  - {address: \"[::1]:1884\", transport: tcp}\n  - {address: \"localhost:1885\", transport: tcp}\n", nil, true},
		{"no packet limit", "limits: {max_packet_size: 0}\n", []string{"max_packet_size is 0 (no limit of Moat's own)", "1MiB default"}, false},
		{"explicit packet limit", "limits: {max_packet_size: 1MiB}\n", nil, true},
		{"unbounded queues", "limits: {max_queued_messages: 0}\n", []string{"at most 1000000 messages"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("w.yaml", []byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			w := c.Warnings()
			if tc.none && len(w) != 0 {
				t.Errorf("unexpected warnings %q", w)
			}
			for _, s := range tc.want {
				if !slices.ContainsFunc(w, func(x string) bool { return strings.Contains(x, s) }) {
					t.Errorf("no warning containing %q in %q", s, w)
				}
			}
		})
	}
}

func TestIsSet(t *testing.T) {
	c, err := Parse("s.conf", []byte("listener 1883 127.0.0.1\nmax_packet_size 1000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsSet("limits.max_packet_size") || !c.IsSet("listeners[0].address") || c.IsSet("limits.max_keepalive") {
		t.Errorf("Set = %q", c.Set)
	}
}

// The seed's mosquitto.conf, with its one-line form (the seed document
// flattened it) turned back into one key per line, maps to mutual TLS with
// the certificate CN as username.
func TestSeedConfig(t *testing.T) {
	c, err := Load("testdata/golden/seed.conf")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if len(c.Listeners) != 1 || l.Address != ":8883" || l.Transport != TransportTLS || l.AllowAnonymous ||
		l.TLS.ClientAuth != ClientAuthRequired || l.TLS.Identity.UsernameFrom != IdentityCN ||
		l.TLS.ClientCA != "/etc/mosquitto/certs/ca-cert.pem" {
		t.Errorf("seed listener = %+v %+v", l, l.TLS)
	}
}

// Validate reports every problem of a Config built in code and does not
// modify it.
func TestValidateCollectsAll(t *testing.T) {
	c := Default()
	c.Listeners[0].Address = "nonsense"
	c.Listeners[0].TLS.MinVersion = "1.0"
	c.Limits.MaxKeepalive = 1
	before := *c.Listeners[0].TLS
	err := c.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "config: 3 problems:") {
		t.Errorf("got %v", err)
	}
	if !reflect.DeepEqual(*c.Listeners[0].TLS, before) {
		t.Error("Validate modified the config")
	}
}

// The package stays a leaf: standard library and yaml only, so that the
// broker, listener and TLS packages can never be pulled into it.
func TestImportsStayLeaf(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(p, "/")
			if p != "go.yaml.in/yaml/v3" && strings.Contains(first, ".") {
				t.Errorf("%s imports %s: internal/config may import only the standard library and go.yaml.in/yaml/v3", f, p)
			}
		}
	}
}

func TestSessionOwnerCheckKey(t *testing.T) {
	for _, tc := range []struct {
		name, file, text string
		ignore           bool
	}{
		{"yaml default strict", "m.yaml", "listeners:\n  - address: 127.0.0.1:1883\n    transport: tcp\n", false},
		{"yaml relaxed", "m.yaml", "listeners:\n  - address: 127.0.0.1:1883\n    transport: tcp\nsessions:\n  ignore_owner: true\n", true},
		{"conf default strict", "m.conf", "listener 1883\n", false},
		{"conf relaxed", "m.conf", "listener 1883\nsession_owner_check false\n", true},
		{"conf explicit strict", "m.conf", "listener 1883\nsession_owner_check true\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.file, []byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if c.Sessions.IgnoreOwner != tc.ignore {
				t.Errorf("IgnoreOwner = %v, want %v", c.Sessions.IgnoreOwner, tc.ignore)
			}
		})
	}
}

// The memory limits are read from Moat YAML; a mosquitto.conf gets Moat's
// safe defaults for them (and for max_packet_size unless it sets it), and
// SafeDefaults lists them for the start-up log line.
func TestMemoryLimits(t *testing.T) {
	c, err := Parse("l.yaml", []byte(`limits:
  max_connections: 500
  max_preauth_packet_size: 16KiB
  max_topic_length: 256
  max_subscription_bytes: 64KiB
  max_retained_messages: 10
  max_retained_bytes: 1MiB
  max_retained_messages_per_identity: 2
  max_retained_bytes_per_identity: 128KiB
  read_budget: 8MiB
`))
	if err != nil {
		t.Fatal(err)
	}
	want := defaultLimits()
	want.MaxConnections, want.MaxPreAuthPacketSize, want.MaxTopicLength, want.MaxSubscriptionBytes = 500, 16<<10, 256, 64<<10
	want.MaxRetainedMessages, want.MaxRetainedBytes, want.MaxRetainedMessagesPerIdentity, want.MaxRetainedBytesPerIdentity = 10, 1<<20, 2, 128<<10
	want.ReadBudget = 8 << 20
	if !reflect.DeepEqual(c.Limits, want) {
		t.Errorf("limits = %+v\nwant %+v", c.Limits, want)
	}
	if sd := c.SafeDefaults(); sd != nil {
		t.Errorf("SafeDefaults of a YAML file = %q", sd)
	}

	m, err := Parse("m.conf", []byte("listener 1883 127.0.0.1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Limits, defaultLimits()) {
		t.Errorf("mosquitto.conf limits = %+v, want Moat's defaults", m.Limits)
	}
	sd := strings.Join(m.SafeDefaults(), " ")
	for _, s := range []string{"max_packet_size=1MiB", "max_connections(all listeners)=RLIMIT_NOFILE-64", "max_preauth_packet_size=64KiB", "max_retained_bytes_per_identity=16MiB", "read_budget=64MiB"} {
		if !strings.Contains(sd, s) {
			t.Errorf("SafeDefaults %q lacks %q", sd, s)
		}
	}
	m, err = Parse("m.conf", []byte("listener 1883 127.0.0.1\nmax_packet_size 2000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Limits.MaxPacketSize != 2000 || strings.Contains(strings.Join(m.SafeDefaults(), " "), "max_packet_size=") {
		t.Errorf("max_packet_size %d, SafeDefaults %q", m.Limits.MaxPacketSize, m.SafeDefaults())
	}

	for _, bad := range []string{
		"max_connections: -1", "max_preauth_packet_size: 10", "max_topic_length: 0", "max_topic_length: 70000",
		"max_subscription_bytes: 0", "max_retained_messages: 0", "max_retained_bytes_per_identity: 0", "read_budget: 0",
	} {
		if _, err := Parse("b.yaml", []byte("limits: {"+bad+"}\n")); err == nil {
			t.Errorf("limits {%s} accepted", bad)
		}
	}
}

// Every limit can be set from a mosquitto.conf too, under its YAML name (a
// Moat extension; the global connection cap as global_max_connections),
// and a limit the file sets is no longer listed as a safe default.
func TestMosquittoLimitExtensions(t *testing.T) {
	m, err := Parse("m.conf", []byte(`listener 1883 127.0.0.1
global_max_connections 500
max_preauth_packet_size 16KiB
max_topic_length 256
max_topic_levels 16
max_subscriptions 50
max_sessions 1000
max_subscription_bytes 65536
max_retained_messages 10
max_retained_bytes 1MiB
max_retained_messages_per_identity 2
max_retained_bytes_per_identity 128KiB
read_budget 8MiB
connect_timeout 5
`))
	if err != nil {
		t.Fatal(err)
	}
	want := defaultLimits()
	want.MaxConnections, want.MaxPreAuthPacketSize, want.MaxTopicLength, want.MaxSubscriptionBytes = 500, 16<<10, 256, 64<<10
	want.MaxTopicLevels, want.MaxSubscriptions, want.MaxSessions = 16, 50, 1000
	want.MaxRetainedMessages, want.MaxRetainedBytes, want.MaxRetainedMessagesPerIdentity, want.MaxRetainedBytesPerIdentity = 10, 1<<20, 2, 128<<10
	want.ReadBudget, want.ConnectTimeout = 8<<20, Duration(5e9)
	if !reflect.DeepEqual(m.Limits, want) {
		t.Errorf("limits = %+v\nwant %+v", m.Limits, want)
	}
	if sd := m.SafeDefaults(); !reflect.DeepEqual(sd, []string{"max_packet_size=1MiB"}) {
		t.Errorf("SafeDefaults = %q, want only max_packet_size", sd)
	}
	if got := m.Pos("limits.read_budget"); got != "m.conf:13" {
		t.Errorf("Pos(limits.read_budget) = %q, want m.conf:13", got)
	}

	for _, bad := range []string{
		"global_max_connections -1", "max_preauth_packet_size 10", "max_topic_length 0", "max_topic_length 70000",
		"max_retained_bytes 1Mb", "read_budget 0", "max_sessions x", "max_retained_messages 0",
	} {
		_, err := Parse("b.conf", []byte("listener 1883 127.0.0.1\n"+bad+"\n"))
		if err == nil || !strings.Contains(err.Error(), "b.conf:2:") {
			t.Errorf("%s: err = %v, want an error at b.conf:2", bad, err)
		}
	}
}

// Listener keys read after parsing point at their own line.
func TestMosquittoListenerKeyPos(t *testing.T) {
	m, err := Parse("m.conf", []byte("listener 8883\ncertfile /c.pem\nkeyfile /k.pem\nciphers HIGH\n"))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"listeners[0].tls.cert": "m.conf:2", "listeners[0].tls.key": "m.conf:3", "listeners[0].tls.ciphers": "m.conf:4",
		"listeners[0].tls.crl": "m.conf:1", "limits.max_inflight": "m.conf",
	} {
		if got := m.Pos(path); got != want {
			t.Errorf("Pos(%s) = %q, want %q", path, got, want)
		}
	}
	if m.Listeners[0].TLS.Ciphers != "HIGH" {
		t.Errorf("ciphers = %q, want the line as written", m.Listeners[0].TLS.Ciphers)
	}
}

// The overload control's settings are read from Moat YAML and, as Moat
// extensions under the same names, from a mosquitto.conf (pushback_wait
// in seconds or as a duration); max_queued_bytes is Mosquitto's own key.
func TestOverloadLimits(t *testing.T) {
	want := defaultLimits()
	want.PushbackMessages, want.PushbackBytes, want.PushbackWait = 50, 256<<10, Duration(500e6)
	want.QueueFullPolicy, want.MaxQueuedBytes = QueueFullBlock, 1<<20
	y, err := Parse("o.yaml", []byte(`limits:
  pushback_messages: 50
  pushback_bytes: 256KiB
  pushback_wait: 500ms
  queue_full_policy: block
  max_queued_bytes: 1MiB
`))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(y.Limits, want) {
		t.Errorf("YAML limits = %+v\nwant %+v", y.Limits, want)
	}
	m, err := Parse("o.conf", []byte(`listener 1883 127.0.0.1
pushback_messages 50
pushback_bytes 256KiB
pushback_wait 500ms
queue_full_policy block
max_queued_bytes 1048576
`))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Limits, want) {
		t.Errorf("mosquitto.conf limits = %+v\nwant %+v", m.Limits, want)
	}
	if got := m.Pos("limits.queue_full_policy"); got != "o.conf:5" {
		t.Errorf("Pos(limits.queue_full_policy) = %q, want o.conf:5", got)
	}
	m, err = Parse("o.conf", []byte("listener 1883 127.0.0.1\npushback_wait 2\npushback_messages 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Limits.PushbackWait != Duration(2e9) || m.Limits.PushbackMessages != 0 {
		t.Errorf("pushback_wait %v, pushback_messages %d; want 2s and 0 (off)", m.Limits.PushbackWait, m.Limits.PushbackMessages)
	}
	for _, bad := range []string{"queue_full_policy: wait", "pushback_wait: 0", "pushback_messages: -1", "pushback_bytes: -1"} {
		if _, err := Parse("b.yaml", []byte("limits: {"+bad+"}\n")); err == nil {
			t.Errorf("limits {%s} accepted", bad)
		}
	}
	for _, bad := range []string{"queue_full_policy wait", "pushback_wait soon", "pushback_messages x", "pushback_bytes 1Mb"} {
		if _, err := Parse("b.conf", []byte("listener 1883 127.0.0.1\n"+bad+"\n")); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
