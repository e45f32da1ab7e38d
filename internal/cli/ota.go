package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/ota"
	"github.com/moatmq/moat/internal/packet"
)

func init() { register(newOTACmd) }

// otaTopic is the default topic of firmware NAME for GROUP.
func otaTopic(group, name string) string { return "ota/" + group + "/" + name }

func newOTACmd(stdio Stdio) *cobra.Command {
	root := &cobra.Command{
		Use:   "ota",
		Short: "Signed and end-to-end encrypted firmware updates over MQTT",
		Long: `moat ota publish splits a firmware image into chunks, signs a manifest
(name, version, size, SHA-256 of the image and of every chunk) with the
publisher's certificate key, encrypts the manifest and every chunk end to
end, and publishes them in order at QoS 1 on ota/<group>/<name>. moat ota
receive verifies the manifest against trusted certificates, refuses a
version that is not newer than the installed one, checks every chunk, and
writes the image only when it is complete and its hash matches.

Updates are not retained: devices that may be offline keep a persistent
session (-c -i ID) so that the broker queues the update for them.`,
	}
	root.AddCommand(newOTAPublish(stdio), newOTAReceive(stdio))
	return root
}

// otaKeyFlags are the key flags of moat ota: a member key directory or a
// raw key. Firmware is always encrypted.
type otaKeyFlags struct {
	keysDir, rawKey string
}

func (k *otaKeyFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.keysDir, "keys", "", "member key `DIR` (from `moat keys fetch --dir DIR`); a key group must cover the topic")
	cmd.Flags().StringVar(&k.rawKey, "raw-key", "", "use the seed's raw AES-GCM format with the 32-byte key in `FILE` instead of a key group")
}

func (k *otaKeyFlags) check(cmd string) error {
	switch {
	case k.keysDir != "" && k.rawKey != "":
		return fmt.Errorf("ota %s: use either --keys DIR or --raw-key FILE, not both", cmd)
	case k.keysDir == "" && k.rawKey == "":
		return fmt.Errorf("ota %s: firmware is always encrypted: give --keys DIR (a key group covering the topic) or --raw-key FILE", cmd)
	}
	return nil
}

func newOTAPublish(stdio Stdio) *cobra.Command {
	var (
		f                        clientFlags
		kf                       otaKeyFlags
		group, name, version     string
		topic, signCert, signKey string
		chunkSize                int
		keyUpdates               bool
	)
	cmd := &cobra.Command{
		Use:   "publish FIRMWARE --group G --version V --sign-cert FILE --sign-key FILE {--keys DIR | --raw-key FILE} [flags]",
		Short: "Sign, encrypt and publish a firmware image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				name = strings.TrimSuffix(filepath.Base(args[0]), filepath.Ext(args[0]))
			}
			if topic == "" {
				if group == "" {
					return errors.New("ota publish: give --group G (topic ota/G/NAME) or --topic T")
				}
				topic = otaTopic(group, name)
			}
			if err := packet.ValidTopicName(topic); err != nil {
				return fmt.Errorf("ota publish: topic %q: %v", topic, err)
			}
			if err := kf.check("publish"); err != nil {
				return err
			}
			if signCert == "" || signKey == "" {
				return errors.New("ota publish: firmware must be signed: give --sign-cert FILE and --sign-key FILE (a certificate the devices trust with --trust)")
			}
			if !cmd.Flags().Changed("qos") {
				f.qos = 1
			}
			cfg, _, err := f.config(cmd.Flags(), stdio)
			if err != nil {
				return err
			}
			signer, err := loadSigner(signCert, signKey)
			if err != nil {
				return err
			}
			var sealer e2e.Sealer
			var members *memberKeys
			keyGroup := "raw key"
			if kf.rawKey != "" {
				if sealer, err = loadRawKey(kf.rawKey); err != nil {
					return err
				}
			} else if members, err = loadMemberKeys(kf.keysDir); err != nil {
				return err
			}
			fw, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("ota publish: %v", err)
			}
			ctx := cmd.Context()
			c, err := client.Dial(ctx, cfg)
			if err != nil {
				return connectHint(err, cfg)
			}
			defer c.Close()
			if members != nil {
				// Seal with the newest epoch the key service announced.
				if keyUpdates {
					stop, err := followBundles(ctx, c, stdio, members)
					if err != nil {
						return fmt.Errorf("ota publish: %w", err)
					}
					defer stop()
				}
				sk, err := members.ring.SendKey(topic, members.id)
				if err != nil {
					return fmt.Errorf("ota publish: %w (hint: create a key group covering %q with member %s as a writer, then fetch its bundle)", err, topic, members.id)
				}
				keyGroup = sk.Group()
				if sealer, err = members.sealer(nil, 0); err != nil {
					return err
				}
			}
			msgs, err := ota.Publish(ota.PublishConfig{Topic: topic, Name: name, Version: version, ChunkSize: chunkSize, Signer: signer, Sealer: sealer}, fw)
			if err != nil {
				return err
			}
			toks := make([]*client.Token, len(msgs))
			for i, om := range msgs {
				toks[i] = c.PublishAsync(ctx, &client.Message{Topic: om.Topic, Payload: om.Payload, QoS: byte(f.qos)})
			}
			for i, tok := range toks {
				if err := tok.Wait(ctx); err != nil {
					return fmt.Errorf("ota publish: message %d of %d: %w", i+1, len(msgs), err)
				}
			}
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := c.Disconnect(dctx); err != nil {
				return fmt.Errorf("ota publish: disconnecting: %w", err)
			}
			fmt.Fprintf(stdio.Out, "published %s %s (%d bytes, %d chunks, sha256 %x) on %s, encrypted with %s\n", name, version, len(fw), len(msgs)-1, sha256.Sum256(fw), topic, keyGroup)
			return nil
		},
	}
	fl := cmd.Flags()
	f.register(fl)
	kf.register(cmd)
	fl.StringVar(&group, "group", "", "device group: the topic is ota/GROUP/NAME (a key group must cover it)")
	fl.StringVar(&name, "name", "", "firmware name (default: FIRMWARE's base name without extension)")
	fl.StringVar(&version, "version", "", "firmware version, dotted decimal (e.g. 1.4.2)")
	fl.StringVar(&topic, "topic", "", "publish on this topic instead of ota/GROUP/NAME")
	fl.StringVar(&signCert, "sign-cert", "", "certificate (PEM) that signs the manifest")
	fl.StringVar(&signKey, "sign-key", "", "private key (PEM) of --sign-cert")
	fl.IntVar(&chunkSize, "chunk-size", ota.DefaultChunkSize, "chunk size in bytes (at most 262144)")
	fl.BoolVar(&keyUpdates, "key-updates", true, "with --keys: first apply a newer key bundle from $moat/keys/<member>, so the update is sealed with the newest epoch")
	return cmd
}

func newOTAReceive(stdio Stdio) *cobra.Command {
	var (
		f                       clientFlags
		kf                      otaKeyFlags
		group, name, topic, out string
		trust, installed        string
		stateDir                string
		timeout, maxAge         time.Duration
		maxSize                 uint64
		keyUpdates              bool
	)
	cmd := &cobra.Command{
		Use:   "receive --trust FILE --out FILE {--group G --name N | --topic T} {--keys DIR | --raw-key FILE} [flags]",
		Short: "Receive, verify and reassemble a firmware update",
		Long: `receive subscribes to the update topic, verifies the signed manifest
against --trust, refuses a version not newer than --installed, checks every
chunk, and writes the image to --out only when it is complete and its
SHA-256 matches. A tampered, truncated or downgraded update is refused
with an error and exit status 1, and nothing is written. Exit status 27
when --timeout expires before any update arrived.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if topic == "" {
				if group == "" || name == "" {
					return errors.New("ota receive: give --group G and --name N (topic ota/G/N), or --topic T")
				}
				topic = otaTopic(group, name)
			}
			if err := packet.ValidTopicName(topic); err != nil {
				return fmt.Errorf("ota receive: topic %q: %v", topic, err)
			}
			if err := kf.check("receive"); err != nil {
				return err
			}
			if trust == "" || out == "" {
				return errors.New("ota receive: --trust FILE (the certificates allowed to sign firmware) and --out FILE are required")
			}
			if !cmd.Flags().Changed("qos") {
				f.qos = 1
			}
			cfg, _, err := f.config(cmd.Flags(), stdio)
			if err != nil {
				return err
			}
			ts, err := loadTrust(trust)
			if err != nil {
				return err
			}
			var opener e2e.Opener
			var members *memberKeys
			if kf.rawKey != "" {
				if opener, err = loadRawKey(kf.rawKey); err != nil {
					return err
				}
			} else {
				if members, err = loadMemberKeys(kf.keysDir); err != nil {
					return err
				}
				if opener, err = e2e.NewGroupOpener(e2e.OpenerConfig{Keys: members.ring, MaxAge: maxAge}); err != nil {
					return err
				}
			}
			// The installed version: the newer of --installed and the
			// version last received on this topic, kept in the state
			// directory, so a downgrade is refused without --installed.
			if stateDir == "" {
				stateDir = kf.keysDir
			}
			if stateDir == "" {
				stateDir = otaDefaultStateDir
			}
			statePath := filepath.Join(stateDir, otaStateFile)
			state, err := otaLoadState(statePath)
			if err != nil {
				return err
			}
			if v := state[topic]; v != "" {
				if c, err := ota.CompareVersions(v, installed); installed == "" || (err == nil && c > 0) {
					installed = v
				}
			}
			rcv, err := ota.NewReceiver(ota.ReceiverConfig{Opener: opener, Trust: ts, Installed: installed, Name: name, MaxSize: maxSize})
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := client.Dial(ctx, cfg)
			if err != nil {
				return connectHint(err, cfg)
			}
			defer c.Close()
			disconnect := func() {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				c.Disconnect(dctx)
			}
			defer disconnect()
			subs := []client.Subscription{{Filter: topic, QoS: byte(f.qos)}}
			bundleTopic := ""
			if members != nil && keyUpdates {
				bundleTopic = (&payloadOpener{members: members}).bundleTopic()
				subs = append(subs, client.Subscription{Filter: bundleTopic, QoS: 1})
			}
			codes, err := c.Subscribe(ctx, subs...)
			if err != nil && codes == nil {
				return fmt.Errorf("ota receive: subscribe: %w", err)
			}
			if len(codes) > 0 && codes[0].IsError() {
				return fmt.Errorf("ota receive: subscription to %q refused: %s", topic, codes[0])
			}
			fmt.Fprintf(stdio.Err, "moat ota: waiting for an update on %s\n", topic)
			var expired <-chan time.Time
			if timeout > 0 {
				t := time.NewTimer(timeout)
				defer t.Stop()
				expired = t.C
			}
			announced := false
			for {
				select {
				case m, ok := <-c.Messages():
					if !ok {
						return fmt.Errorf("ota receive: client stopped: %w", c.Err())
					}
					if bundleTopic != "" && m.Topic == bundleTopic {
						applyBundleMessage(stdio, members, m)
						continue
					}
					if m.Topic != topic {
						continue
					}
					done, err := rcv.Handle(m.Topic, m.Payload)
					switch {
					case errors.Is(err, ota.ErrNoManifest):
						fmt.Fprintln(stdio.Err, "moat ota: a chunk arrived before any manifest; ignored")
						continue
					case errors.Is(err, e2e.ErrReplay):
						fmt.Fprintf(stdio.Err, "moat ota: a replayed message was ignored: %v\n", err)
						continue
					case err != nil:
						return fmt.Errorf("ota receive: update refused, nothing written: %w", err)
					}
					if mf := rcv.Manifest(); mf != nil && !announced {
						announced = true
						signer := ""
						if mf.Signer != nil {
							signer = e2e.CertIdentity(mf.Signer)
						}
						fmt.Fprintf(stdio.Err, "moat ota: receiving %s %s (%d bytes, %d chunks) signed by %s\n", mf.Name, mf.Version, mf.Size, len(mf.ChunkHashes), signer)
					}
					if !done {
						continue
					}
					img, err := rcv.Image()
					if err != nil {
						return fmt.Errorf("ota receive: update refused, nothing written: %w", err)
					}
					if err := writeFileSynced(out, img, 0o644); err != nil {
						return fmt.Errorf("ota receive: %w", err)
					}
					mf := rcv.Manifest()
					state[topic] = mf.Version
					if err := otaSaveState(statePath, state); err != nil {
						return fmt.Errorf("ota receive: image written to %s, but %w", out, err)
					}
					fmt.Fprintf(stdio.Out, "received %s %s (%d bytes, sha256 %x) into %s\n", mf.Name, mf.Version, len(img), mf.SHA256, out)
					return nil
				case <-expired:
					if rcv.Manifest() == nil {
						return &exitError{exitTimedOut, fmt.Errorf("ota receive: no update on %s within %s", topic, timeout)}
					}
					_, err := rcv.Image()
					return fmt.Errorf("ota receive: update refused after %s, nothing written: %w", timeout, err)
				case <-c.Done():
					return fmt.Errorf("ota receive: client stopped: %w", c.Err())
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		},
	}
	fl := cmd.Flags()
	f.register(fl)
	kf.register(cmd)
	fl.StringVar(&group, "group", "", "device group: the topic is ota/GROUP/NAME")
	fl.StringVar(&name, "name", "", "firmware name; a manifest for another name is refused")
	fl.StringVar(&topic, "topic", "", "subscribe to this topic instead of ota/GROUP/NAME")
	fl.StringVar(&out, "out", "", "write the verified image to `FILE`")
	fl.StringVar(&trust, "trust", "", "PEM `FILE` of the certificates allowed to sign firmware")
	fl.StringVar(&installed, "installed", "", "installed version: only a newer one is accepted (the version last received, kept in --state-dir, counts too)")
	fl.StringVar(&stateDir, "state-dir", "", "`DIR` keeping the version last received per topic in "+otaStateFile+" (default: the --keys DIR, else "+otaDefaultStateDir+")")
	fl.DurationVar(&timeout, "timeout", 0, "give up after this long (0: wait forever)")
	fl.DurationVar(&maxAge, "max-age", 24*time.Hour, "refuse update messages sealed longer ago than this (queued in a persistent session)")
	fl.Uint64Var(&maxSize, "max-size", ota.DefaultMaxSize, "refuse images larger than this many bytes")
	fl.BoolVar(&keyUpdates, "key-updates", true, "with --keys: also apply newer key bundles from $moat/keys/<member>")
	return cmd
}

// The receiver's state: the version last received per update topic.
const (
	otaStateFile       = "ota-installed.json"
	otaDefaultStateDir = "moat-data/ota"
	otaMaxStateSize    = 1 << 20
)

// otaLoadState reads the state file; a missing file is an empty state, a
// corrupt one an error (a downgrade check must not silently start over).
func otaLoadState(path string) (map[string]string, error) {
	state := map[string]string{}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return state, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ota receive: reading the installed versions: %w", err)
	}
	if len(data) > otaMaxStateSize || json.Unmarshal(data, &state) != nil {
		return nil, fmt.Errorf("ota receive: %s is corrupt; it holds the installed version of each update topic (restore it, or delete it and pass --installed)", path)
	}
	for t, v := range state {
		if _, err := ota.CompareVersions(v, v); err != nil {
			return nil, fmt.Errorf("ota receive: %s: topic %q: %w", path, t, err)
		}
	}
	return state, nil
}

// otaSaveState writes the state file atomically with mode 0600.
func otaSaveState(path string, state map[string]string) error {
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("recording the installed version: %w", err)
	}
	if err := writeFileSynced(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("recording the installed version: %w", err)
	}
	return nil
}
