package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/packet"
)

func init() { register(newPubCmd) }

// pubWindow is how many QoS 1/2 messages of -l mode may wait for their
// acknowledgement before moat pub reports on the oldest.
const pubWindow = 1024

func newPubCmd(stdio Stdio) *cobra.Command {
	var (
		f                     clientFlags
		ef                    e2eFlags
		topic, message, file  string
		lines, null, stdinMsg bool
		retain                bool
		userProps             []string
		contentType           string
		messageExpiry         int64
		repeat                int
		repeatDelay           float64
	)
	cmd := &cobra.Command{
		Use:   "pub -t TOPIC {-m MSG | -f FILE | -l | -n | -s} [flags]",
		Short: "Publish MQTT messages (flags as mosquitto_pub)",
		Long: `Publish one message, a file, or every line of standard input to an MQTT broker.
Flags follow mosquitto_pub. The password comes from --password-file FILE or the
` + passwordEnv + ` environment variable (-P works but leaks it to other local users).
TLS is used with --cafile, --capath, --cert, --tls or port 8883 (default port 8883 then,
1883 otherwise). The default protocol is MQTT 5 (-V 311 for 3.1.1, mosquitto's default);
-D COMMAND PROPERTY VALUE sets MQTT 5 properties as in mosquitto_pub.

End-to-end encryption: --encrypt --keys DIR seals every message with the key
group covering the topic (DIR from ` + "`moat keys fetch --dir DIR`" + `), optionally
signed with --sign-cert/--sign-key; --raw-key FILE uses the seed's raw AES-GCM
format. An empty message (-n) is sent as is: it clears a retained message.`,
		// Flags are parsed by parseClientArgs, for -D.
		DisableFlagParsing: true,
		Args:               cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			props, help, err := parseClientArgs(cmd, args)
			if err != nil || help {
				if help {
					return cmd.Help()
				}
				return err
			}
			if f.quiet {
				stdio.Err = io.Discard
				defer func() { err = quietError(err) }()
			}
			cfg, urlTopic, err := f.config(cmd.Flags(), stdio)
			if err != nil {
				return err
			}
			if topic == "" {
				topic = urlTopic
			}
			if topic == "" {
				return errors.New("no topic: give -t TOPIC")
			}
			if err := packet.ValidTopicName(topic); err != nil {
				return fmt.Errorf("-t %q: %v", topic, err)
			}
			n := 0
			for _, set := range []bool{cmd.Flags().Changed("message"), file != "", lines, null, stdinMsg} {
				if set {
					n++
				}
			}
			if n != 1 {
				return errors.New("give exactly one of -m MSG, -f FILE, -l, -n or -s")
			}
			if repeat < 1 || repeatDelay < 0 || (lines && cmd.Flags().Changed("repeat")) {
				return errors.New("--repeat must be at least 1 and --repeat-delay not negative; they do not apply to -l")
			}
			base := client.Message{Topic: topic, QoS: byte(f.qos), Retain: retain}
			for _, kv := range userProps {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--user-property %q: want KEY=VALUE", kv)
				}
				base.Properties.User = append(base.Properties.User, client.UserProperty{Key: k, Value: v})
			}
			if contentType != "" {
				base.Properties.ContentType = contentType
				base.Properties.Mark(client.PropContentType)
			}
			if messageExpiry >= 0 {
				if messageExpiry > 0xFFFFFFFF {
					return errors.New("--message-expiry: at most 4294967295 seconds")
				}
				base.Properties.SetMessageExpiry(uint32(messageExpiry))
			}
			if err := applyProps(props, propTargets{cfg: &cfg, publish: &base.Properties}); err != nil {
				return err
			}

			var payload []byte
			switch {
			case file != "":
				if payload, err = os.ReadFile(file); err != nil {
					return fmt.Errorf("-f: %v", err)
				}
			case stdinMsg:
				if payload, err = io.ReadAll(stdio.In); err != nil {
					return fmt.Errorf("reading standard input: %v", err)
				}
			case null:
			case !lines:
				payload = []byte(message)
			}

			block := uint64(repeat)
			if lines {
				block = 0
			}
			sealer, members, err := ef.sealer(block)
			if err != nil {
				return err
			}

			ctx := cmd.Context()
			c, err := client.Dial(ctx, cfg)
			if err != nil {
				return connectHint(err, cfg)
			}
			defer c.Close()
			if members != nil && ef.keyUpdates {
				stop, err := followBundles(ctx, c, stdio, members)
				if err != nil {
					return err
				}
				defer stop()
			}
			p := &publisher{c: c, stdio: stdio, json: f.json, sealer: sealer}
			if lines {
				err = p.lines(ctx, base)
			} else {
				for i := 0; i < repeat && err == nil; i++ {
					if i > 0 && repeatDelay > 0 {
						t := time.NewTimer(time.Duration(repeatDelay * float64(time.Second)))
						select {
						case <-t.C:
						case <-ctx.Done():
							t.Stop()
							err = ctx.Err()
							continue
						}
					}
					m := base
					if m.Payload, err = p.seal(m.Topic, payload, m.Retain); err != nil {
						continue
					}
					err = p.report(&m, c.Publish(ctx, &m))
				}
			}
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if derr := c.Disconnect(dctx); err == nil && derr != nil {
				err = fmt.Errorf("disconnecting: %w", derr)
			}
			return err
		},
	}
	fl := cmd.Flags()
	f.register(fl)
	f.registerPubSub(fl)
	ef.registerSeal(fl)
	fl.StringVarP(&topic, "topic", "t", "", "topic to publish to")
	fl.StringVarP(&message, "message", "m", "", "message payload")
	fl.StringVarP(&file, "file", "f", "", "send the contents of FILE as the message")
	fl.BoolVarP(&lines, "stdin-line", "l", false, "send each line of standard input as a message (blank lines are skipped)")
	fl.BoolVarP(&null, "null-message", "n", false, "send a zero-length message")
	fl.BoolVarP(&stdinMsg, "stdin-file", "s", false, "send all of standard input as one message")
	fl.BoolVarP(&retain, "retain", "r", false, "ask the broker to retain the message")
	fl.StringArrayVar(&userProps, "user-property", nil, "MQTT 5 user property KEY=VALUE (repeatable)")
	fl.StringVar(&contentType, "content-type", "", "MQTT 5 content type")
	fl.Int64Var(&messageExpiry, "message-expiry", -1, "MQTT 5 message expiry interval in seconds")
	fl.IntVar(&repeat, "repeat", 1, "publish the message this many times")
	fl.Float64Var(&repeatDelay, "repeat-delay", 0, "seconds to wait between repeated messages")
	return cmd
}

type publisher struct {
	c      *client.Client
	stdio  Stdio
	json   bool
	sealer e2e.Sealer // nil: payloads are sent as given
}

// seal encrypts a payload when end-to-end encryption is on. Every
// message is sealed on its own (fresh sequence number and nonce), also
// repeated ones. An empty payload stays empty: it clears a retained
// message and carries nothing to protect. A message published with the
// retain flag is sealed marked retained (group mode), so subscribers open
// it under the retained-message rules; the flag itself is not trusted.
func (p *publisher) seal(topic string, payload []byte, retain bool) ([]byte, error) {
	if p.sealer == nil || len(payload) == 0 {
		return payload, nil
	}
	var out []byte
	var err error
	if rs, ok := p.sealer.(interface {
		SealRetained(topic string, plaintext []byte) ([]byte, error)
	}); ok && retain {
		out, err = rs.SealRetained(topic, payload)
	} else {
		out, err = p.sealer.Seal(topic, payload)
	}
	if errors.Is(err, e2e.ErrNoKey) {
		return nil, fmt.Errorf("%w (hint: no key group in --keys covers %q for this member as a writer; check `moat keys status` and fetch a fresh bundle)", err, topic)
	}
	if err != nil {
		return nil, fmt.Errorf("encrypting for %q: %w", topic, err)
	}
	return out, nil
}

// lines publishes each non-empty line of standard input, keeping up to
// pubWindow acknowledgements outstanding.
func (p *publisher) lines(ctx context.Context, base client.Message) error {
	sc := bufio.NewScanner(p.stdio.In)
	sc.Buffer(make([]byte, 64<<10), packet.MaxPacketSizeLimit)
	type pending struct {
		m   *client.Message
		tok *client.Token
	}
	var queue []pending
	var firstErr error
	wait := func(q pending) {
		err := p.report(q.m, q.tok.Wait(ctx))
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		m := base
		payload, err := p.seal(m.Topic, append([]byte(nil), line...), m.Retain)
		if err != nil {
			firstErr = err
			break
		}
		m.Payload = payload
		queue = append(queue, pending{&m, p.c.PublishAsync(ctx, &m)})
		if len(queue) >= pubWindow {
			wait(queue[0])
			queue = queue[1:]
		}
		if firstErr != nil {
			break
		}
	}
	for _, q := range queue {
		wait(q)
	}
	if err := sc.Err(); err != nil && firstErr == nil {
		firstErr = fmt.Errorf("reading standard input: %v", err)
	}
	return firstErr
}

// report prints the outcome of one publish (JSON mode) and returns err
// with a hint.
func (p *publisher) report(m *client.Message, err error) error {
	if p.json {
		j := &jsonMessage{Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Status: "ok"}
		if err != nil {
			j.Status, j.Error = "error", err.Error()
			var re *client.ReasonError
			if errors.As(err, &re) {
				code := byte(re.Code)
				j.ReasonCode = &code
			}
		}
		writeJSON(p.stdio.Out, j)
	}
	if err != nil {
		return fmt.Errorf("publish to %q: %w", m.Topic, err)
	}
	return nil
}

// followBundles subscribes a publisher to its member's bundle topic, so
// that it seals with a new epoch as soon as the key service announces one
// (a member was removed, a rotation). The retained bundle is applied
// before followBundles returns: a second SUBSCRIBE round trip follows the
// first, and a broker sends a subscription's retained message before
// acknowledging the next packet. Later bundles are applied as they
// arrive, by a goroutine that stop ends and waits for.
func followBundles(ctx context.Context, c *client.Client, stdio Stdio, members *memberKeys) (stop func(), err error) {
	topic := (&payloadOpener{members: members}).bundleTopic()
	sub := client.Subscription{Filter: topic, QoS: 1}
	codes, err := c.Subscribe(ctx, sub)
	if err != nil {
		return nil, fmt.Errorf("subscribing to the key bundle topic %s: %w", topic, err)
	}
	if len(codes) == 1 && codes[0].IsError() {
		fmt.Fprintf(stdio.Err, "moat: subscription to the key bundle topic %s refused (%s); sealing with %s/%s only (hint: let the member read its bundle topic, or pass --key-updates=false)\n", topic, codes[0], members.dir, memberBundle)
		return func() {}, nil
	}
	apply := func(m *client.Message) {
		if m.Topic == topic {
			applyBundleMessage(stdio, members, m)
		}
	}
	// The round trip: Moat and Mosquitto write the retained message
	// before this SUBACK (with MQTT 3.1.1 it is sent again and ignored as
	// not newer). Drain then waits for what arrived before the SUBACK to
	// pass from the connection to Messages(): the retained bundle is
	// applied before the first message is sealed.
	sub.RetainHandling = 2
	if _, err := c.Subscribe(ctx, sub); err != nil {
		return nil, fmt.Errorf("subscribing to the key bundle topic %s: %w", topic, err)
	}
	if err := c.Drain(ctx, apply); err != nil {
		return nil, fmt.Errorf("client stopped: %w", err)
	}
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m, ok := <-c.Messages():
				if !ok {
					return
				}
				apply(m)
			case <-quit:
				return
			}
		}
	}()
	return func() { close(quit); <-done }, nil
}
