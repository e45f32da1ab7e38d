package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e/keyservice"
)

// mqttFlags configure the MQTT connection of `moat keys serve --mqtt` and
// `moat keys fetch --mqtt`. They are prefixed with --mqtt- because both
// commands already have --cert/--key/--ca flags for HTTPS.
type mqttFlags struct {
	url          string
	cafile       string
	cert, key    string
	username     string
	passwordFile string
	clientID     string
}

func (f *mqttFlags) register(fs *pflag.FlagSet, what string) {
	fs.StringVar(&f.url, "mqtt", "", what+" over MQTT: broker `URL` mqtt://, mqtts://, ws:// or wss://host:port")
	fs.StringVar(&f.cafile, "mqtt-cafile", "", "CA certificates (PEM) that issued the broker's certificate")
	fs.StringVar(&f.cert, "mqtt-cert", "", "client certificate (PEM) for the broker")
	fs.StringVar(&f.key, "mqtt-key", "", "private key (PEM) of --mqtt-cert")
	fs.StringVar(&f.username, "mqtt-username", "", "MQTT user name")
	fs.StringVar(&f.passwordFile, "mqtt-password-file", "", "read the MQTT password from the first line of `FILE` (or set "+passwordEnv+")")
	fs.StringVar(&f.clientID, "mqtt-client-id", "", "MQTT client ID (default: assigned by the broker)")
}

// secure reports whether the URL asks for TLS.
func (f *mqttFlags) secure() bool {
	u, err := url.Parse(f.url)
	return err == nil && (u.Scheme == "mqtts" || u.Scheme == "wss")
}

// config builds the client configuration.
func (f *mqttFlags) config() (client.Config, error) {
	var cfg client.Config
	u, err := url.Parse(f.url)
	if err != nil {
		return cfg, fmt.Errorf("--mqtt: %v", err)
	}
	if u.User != nil {
		return cfg, errors.New("--mqtt: no credentials in the URL (they would be visible to other users); use --mqtt-username and --mqtt-password-file")
	}
	cfg.Servers = []string{f.url}
	cfg.ClientID = f.clientID
	cfg.CleanStart = true
	cfg.Username = f.username
	secure := u.Scheme == "mqtts" || u.Scheme == "wss"
	if f.cafile != "" || f.cert != "" || secure {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.cafile != "" {
			b, err := os.ReadFile(f.cafile)
			if err != nil {
				return cfg, fmt.Errorf("--mqtt-cafile: %v", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(b) {
				return cfg, fmt.Errorf("--mqtt-cafile %s: no PEM certificate found", f.cafile)
			}
		}
		if (f.cert == "") != (f.key == "") {
			return cfg, errors.New("--mqtt-cert and --mqtt-key go together")
		}
		if f.cert != "" {
			c, err := tls.LoadX509KeyPair(f.cert, f.key)
			if err != nil {
				return cfg, fmt.Errorf("loading the MQTT client certificate: %v", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLSConfig = tc
		if !secure {
			return cfg, errors.New("--mqtt: TLS files given for a plain mqtt:// or ws:// URL; use mqtts:// or wss://")
		}
	}
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return cfg, fmt.Errorf("--mqtt-password-file: %v", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		cfg.Password = client.NewSecret([]byte(strings.TrimSuffix(line, "\r")))
		clear(b)
	} else if pw := getenv(passwordEnv); pw != "" {
		cfg.Password = client.NewSecret([]byte(pw))
	}
	return cfg, nil
}

// mqttPublisher adapts a client to keyservice.Publisher: QoS 1.
type mqttPublisher struct{ c *client.Client }

func (p mqttPublisher) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	return p.c.Publish(ctx, &client.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain})
}

var _ keyservice.Publisher = mqttPublisher{}

// bundleChanges collects the members whose bundle changed (from
// keyservice.Config.OnChange) for the publishing goroutine, coalescing
// bursts. Safe for concurrent use.
type bundleChanges struct {
	mu      sync.Mutex
	all     bool
	members map[string]bool
	wake    chan struct{}
}

func newBundleChanges() *bundleChanges {
	return &bundleChanges{all: true, members: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// add records changed members; it never blocks.
func (b *bundleChanges) add(members []string) {
	b.mu.Lock()
	for _, m := range members {
		b.members[m] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// take returns and clears the pending changes; all means every
// registered member.
func (b *bundleChanges) take() (all bool, members []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	all, b.all = b.all, false
	for m := range b.members {
		members = append(members, m)
	}
	clear(b.members)
	slices.Sort(members)
	return all, members
}

// requeue puts back changes whose publication failed.
func (b *bundleChanges) requeue(all bool, members []string) {
	b.mu.Lock()
	b.all = b.all || all
	for _, m := range members {
		b.members[m] = true
	}
	b.mu.Unlock()
}

// registeredMembers lists every member with a registered key.
func registeredMembers(s *keyservice.Service) ([]string, error) {
	gs, err := s.Groups()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, g := range gs {
		for _, m := range g.Members {
			if m.KEM != 0 && !seen[m.ID] {
				seen[m.ID] = true
				out = append(out, m.ID)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// publishBundlesLoop publishes every registered member's bundle once, then
// the bundles of changed members whenever they change, until ctx is done.
// Failed publications are retried after retry.
func publishBundlesLoop(ctx context.Context, s *keyservice.Service, p keyservice.Publisher, ch *bundleChanges, log *slog.Logger, retry time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch.wake:
		case <-t.C:
		}
		all, members := ch.take()
		if all {
			var err error
			if members, err = registeredMembers(s); err != nil {
				log.Error("keys: listing members", "err", err)
				ch.requeue(true, nil)
				t.Reset(retry)
				continue
			}
		}
		if len(members) == 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.PublishBundles(pctx, p, members)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("keys: publishing bundles over MQTT failed; retrying", "members", len(members), "err", err)
			ch.requeue(all, members)
			t.Reset(retry)
			continue
		}
		log.Info("keys: bundles published over MQTT", "members", len(members))
	}
}
