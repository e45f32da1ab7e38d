package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

func init() { register(newSubCmd) }

// exitTimedOut is mosquitto_sub's exit status when -W expires.
const exitTimedOut = 27

func newSubCmd(stdio Stdio) *cobra.Command {
	var (
		f                   clientFlags
		ef                  e2eFlags
		topics, filterOut   []string
		unsubscribe         []string
		count, timeout      int
		verbose, noEOL      bool
		noRetained, exitSub bool
		noLocal, rap        bool
		retainHandling      int
		subscriptionID      uint32
		format              string
		retainedOnly        bool
		removeRetained      bool
	)
	cmd := &cobra.Command{
		Use:   "sub -t FILTER [-t FILTER…] [flags]",
		Short: "Subscribe and print MQTT messages (flags as mosquitto_sub)",
		Long: `Subscribe to topic filters and print the messages received: the payload, with -v
"topic payload", with --json one JSON object per line (payload as a string when it is
UTF-8, payload_base64 otherwise; MQTT 5 properties included). Flags follow mosquitto_sub;
the client reconnects when the connection drops (each failed attempt is
reported on stderr) and exits with status 1 when the broker refuses it for
good (certificate refused or revoked, CONNECT refused). -F FORMAT prints
as mosquitto_sub's -F; -D COMMAND PROPERTY VALUE sets MQTT 5 properties.
The password comes from --password-file
FILE or the ` + passwordEnv + ` environment variable. Exit status 27 when -W expires.

End-to-end encryption: --decrypt --keys DIR opens messages sealed by moat pub
--encrypt (DIR from ` + "`moat keys fetch --dir DIR`" + `); it also follows the member's key
bundle topic and applies newer bundles (--key-updates=false to stop that).
--trust FILE and --require-signature check senders' signatures; --raw-key FILE
opens the seed's raw AES-GCM format. A message that does not decrypt or verify
is reported on stderr and never printed.`,
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
			var subProps client.Properties
			if subscriptionID > 0 {
				subProps.SubscriptionIDs = []uint32{subscriptionID}
			}
			if err := applyProps(props, propTargets{cfg: &cfg, subscribe: &subProps}); err != nil {
				return err
			}
			po := printOpts{json: f.json, verbose: verbose, noEOL: noEOL}
			if format != "" {
				if f.json {
					return errors.New("use either -F FORMAT or --json (-F %j prints the JSON form)")
				}
				if po.format, err = parseFormat(format); err != nil {
					return err
				}
			}
			if retainedOnly && noRetained {
				return errors.New("--retained-only and -R (no retained messages) exclude each other")
			}
			if len(topics) == 0 && urlTopic != "" {
				topics = []string{urlTopic}
			}
			if len(topics) == 0 && len(unsubscribe) == 0 {
				return errors.New("no topic filter: give -t FILTER")
			}
			if count < 0 || timeout < 0 || retainHandling < 0 || retainHandling > 2 {
				return errors.New("-C and -W must not be negative, --retain-handling is 0, 1 or 2")
			}
			for _, t := range append(append([]string(nil), topics...), filterOut...) {
				if err := packet.ValidTopicFilter(t); err != nil {
					return fmt.Errorf("topic filter %q: %v", t, err)
				}
			}
			opener, err := ef.opener()
			if err != nil {
				return err
			}
			bundleTopic := opener.bundleTopic()
			// A message is acknowledged once it is printed, so that with -c
			// the broker keeps what -C left unprinted.
			cfg.ManualAck = true
			cfg.Reconnect = retryPolicy(stdio.Err)
			cfg.OnConnectionLost = func(_ *client.Client, err error) {
				fmt.Fprintf(stdio.Err, "moat: connection lost: %v; reconnecting\n", err)
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
			if len(unsubscribe) > 0 {
				if _, err := c.Unsubscribe(ctx, unsubscribe...); err != nil {
					return fmt.Errorf("unsubscribe: %w", err)
				}
			}
			if len(topics) > 0 {
				subs := make([]client.Subscription, len(topics))
				for i, t := range topics {
					subs[i] = client.Subscription{Filter: t, QoS: byte(f.qos), NoLocal: noLocal,
						RetainAsPublished: rap, RetainHandling: byte(retainHandling)}
				}
				if bundleTopic != "" {
					subs = append(subs, client.Subscription{Filter: bundleTopic, QoS: 1})
				}
				codes, err := c.SubscribeWith(ctx, subProps, subs...)
				// A connection that breaks before SUBACK is a transient
				// failure like any other: the client reconnects, and the
				// subscription is asked for again (mosquitto_sub subscribes
				// on every connect). Permanent refusals end the loop with
				// their own error.
				for try := 1; err != nil && codes == nil && errors.Is(err, client.ErrConnectionLost) && ctx.Err() == nil && try <= maxSubscribeRetries; try++ {
					fmt.Fprintf(stdio.Err, "moat: connection lost before the subscription was acknowledged; retrying (%d)\n", try)
					select {
					case <-ctx.Done():
					case <-time.After(subscribeRetryDelay):
					}
					codes, err = c.SubscribeWith(ctx, subProps, subs...)
				}
				if err != nil && codes == nil {
					if ctx.Err() != nil {
						// Interrupted while the subscription was being
						// asked for: an interrupt ends moat sub
						// quietly, whatever step it is in.
						return nil
					}
					return fmt.Errorf("subscribe: %w", err)
				}
				denied := 0
				for i, code := range codes {
					switch {
					case !code.IsError():
					case i < len(topics):
						denied++
						fmt.Fprintf(stdio.Err, "moat: subscription to %q refused: %s\n", topics[i], code)
					default:
						fmt.Fprintf(stdio.Err, "moat: warning: subscription to the key bundle topic %q refused (%s): key updates will not arrive\n", bundleTopic, code)
					}
				}
				if denied >= len(topics) {
					disconnect()
					return errors.New("all subscription requests were denied")
				}
			}
			if exitSub {
				disconnect()
				return nil
			}

			var expired <-chan time.Time
			if timeout > 0 {
				t := time.NewTimer(time.Duration(timeout) * time.Second)
				defer t.Stop()
				expired = t.C
			}
			out := bufio.NewWriter(stdio.Out)
			defer out.Flush()
			received := 0
			// --remove-retained: the empty retained messages sent, waited
			// for before exiting.
			var clears []*client.Token
			defer func() {
				wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				for _, t := range clears {
					if err := t.Wait(wctx); err != nil {
						fmt.Fprintf(stdio.Err, "moat: clearing a retained message: %v\n", err)
					}
				}
			}()
			for {
				select {
				case m, ok := <-c.Messages():
					if !ok {
						return stopped(c, cfg)
					}
					if bundleTopic != "" && m.Topic == bundleTopic {
						applyBundleMessage(stdio, opener.members, m)
						c.Ack(m)
						continue
					}
					if filtered(m.Topic, filterOut) {
						c.Ack(m)
						continue
					}
					if retainedOnly && !m.Retain {
						// mosquitto_sub: stop at the first message that
						// is not retained.
						c.Ack(m)
						out.Flush()
						disconnect()
						return nil
					}
					if removeRetained && m.Retain && len(m.Payload) > 0 {
						clears = slices.DeleteFunc(clears, func(t *client.Token) bool { return t.Err() == nil && isDone(t) })
						clears = append(clears, c.PublishAsync(ctx, &client.Message{Topic: m.Topic, QoS: 1, Retain: true}))
					}
					if noRetained && m.Retain {
						c.Ack(m)
						continue
					}
					if opener != nil {
						em, err := opener.open(m)
						if err != nil {
							// Never print what did not open: report and drop it.
							fmt.Fprintf(stdio.Err, "moat: message on %q refused: %v\n", m.Topic, ef.openHint(err))
							c.Ack(m)
							continue
						}
						if err := printOpened(out, m, em, po); err != nil {
							return err
						}
					} else if err := printMessage(out, m, po); err != nil {
						return err
					}
					received++
					if m.QoS > 0 || len(c.Messages()) == 0 || (count > 0 && received >= count) {
						if err := out.Flush(); err != nil {
							return fmt.Errorf("writing output: %w", err)
						}
					}
					c.Ack(m)
					if count > 0 && received >= count {
						disconnect()
						return nil
					}
				case <-expired:
					out.Flush()
					disconnect()
					fmt.Fprintln(stdio.Err, "Timed out")
					return &exitError{exitTimedOut, fmt.Errorf("no more messages after -W %d seconds", timeout)}
				case <-c.Done():
					return stopped(c, cfg)
				case <-ctx.Done():
					out.Flush()
					disconnect()
					return nil
				}
			}
		},
	}
	fl := cmd.Flags()
	f.register(fl)
	f.registerPubSub(fl)
	ef.registerOpen(fl)
	fl.StringVarP(&format, "format", "F", "", "print each message by this FORMAT, as mosquitto_sub (%t topic, %p payload, %q, %r, %l, %m, %I, %U, %x, %j, …; see docs/client.md)")
	fl.BoolVar(&retainedOnly, "retained-only", false, "print only retained messages; exit at the first message that is not retained")
	fl.BoolVar(&removeRetained, "remove-retained", false, "clear every retained message received (sends an empty retained message; -T filters out topics to keep)")
	fl.StringArrayVarP(&topics, "topic", "t", nil, "topic filter to subscribe to (repeatable)")
	fl.StringArrayVarP(&filterOut, "filter-out", "T", nil, "do not print messages matching this filter (repeatable)")
	fl.StringArrayVarP(&unsubscribe, "unsubscribe", "U", nil, "unsubscribe from this filter first (repeatable; for -c sessions)")
	fl.IntVarP(&count, "count", "C", 0, "exit after printing this many messages")
	fl.IntVarP(&timeout, "timeout", "W", 0, "exit with status 27 after this many seconds")
	fl.BoolVarP(&verbose, "verbose", "v", false, "print \"topic payload\"")
	fl.BoolVarP(&noEOL, "no-eol", "N", false, "do not add a newline after the payload")
	fl.BoolVarP(&noRetained, "no-retained", "R", false, "do not print retained (stale) messages")
	fl.BoolVarP(&exitSub, "exit-after-sub", "E", false, "exit once the subscriptions are acknowledged")
	fl.BoolVar(&noLocal, "nl", false, "MQTT 5 No Local: do not receive our own messages")
	fl.BoolVar(&rap, "rap", false, "MQTT 5 Retain As Published")
	fl.IntVar(&retainHandling, "retain-handling", 0, "MQTT 5 retain handling: 0 send, 1 only if new, 2 never")
	fl.Uint32Var(&subscriptionID, "subscription-id", 0, "MQTT 5 subscription identifier")
	return cmd
}

// isDone reports whether t has completed.
func isDone(t *client.Token) bool {
	select {
	case <-t.Done():
		return true
	default:
		return false
	}
}

// stopped is the error of a client that stopped on its own: the broker
// refused to let it reconnect.
func stopped(c *client.Client, cfg client.Config) error {
	return connectHint(fmt.Errorf("the broker refused the connection, not retrying: %w", c.Err()), cfg)
}

func filtered(t string, filters []string) bool {
	for _, f := range filters {
		if topic.MatchFilter(f, t) {
			return true
		}
	}
	return false
}

// printOpts are the output flags of moat sub.
type printOpts struct {
	json, verbose, noEOL bool
	format               *msgFormat // -F
}

func printMessage(w *bufio.Writer, m *client.Message, o printOpts) error {
	if o.json {
		return writeJSON(w, toJSON(m))
	}
	if o.format != nil {
		if err := o.format.write(w, m, time.Now()); err != nil {
			return err
		}
		if !o.noEOL {
			w.WriteByte('\n')
		}
		return nil
	}
	if o.verbose {
		w.WriteString(m.Topic)
		w.WriteByte(' ')
	}
	w.Write(m.Payload)
	if !o.noEOL {
		w.WriteByte('\n')
	}
	return nil
}

// jsonE2E describes how a printed message was protected (--json).
type jsonE2E struct {
	Mode   string `json:"mode"` // "group" or "raw"
	Group  string `json:"group,omitempty"`
	Epoch  uint64 `json:"epoch,omitempty"`
	Sender string `json:"sender,omitempty"`
	Seq    uint64 `json:"seq,omitempty"`
	Time   string `json:"time,omitempty"`
	Signer string `json:"signer,omitempty"` // verified signer's identity
}

// printOpened prints a decrypted message like printMessage, with the
// plaintext as its payload; --json adds an "e2e" object.
func printOpened(w *bufio.Writer, m *client.Message, em *e2e.Message, o printOpts) error {
	dm := *m
	dm.Payload = em.Plaintext
	if !o.json {
		return printMessage(w, &dm, o)
	}
	info := &jsonE2E{Mode: "raw"}
	if em.Group != "" {
		info = &jsonE2E{Mode: "group", Group: em.Group, Epoch: em.Epoch, Sender: em.Sender, Seq: em.Seq,
			Time: em.Time.UTC().Format(time.RFC3339Nano)}
		if em.Signer != nil {
			info.Signer = e2e.CertIdentity(em.Signer)
		}
	}
	return writeJSON(w, struct {
		*jsonMessage
		E2E *jsonE2E `json:"e2e"`
	}{toJSON(&dm), info})
}

// applyBundleMessage applies a key bundle received on the member's bundle
// topic and reports the outcome on stderr.
func applyBundleMessage(stdio Stdio, keys *memberKeys, m *client.Message) {
	if len(m.Payload) == 0 {
		return
	}
	u, err := keys.applyBundle(m.Payload)
	switch {
	case err != nil:
		fmt.Fprintf(stdio.Err, "moat: key bundle on %q refused: %v\n", m.Topic, err)
	case u.applied:
		fmt.Fprintf(stdio.Err, "moat: key bundle %d applied (%d epoch keys, %d sender keys)\n", u.serial, u.epochs, u.senders)
	}
}

// A subscription whose connection breaks before SUBACK is asked for again
// after the client reconnects, at most maxSubscribeRetries times, waiting
// subscribeRetryDelay between tries.
const (
	maxSubscribeRetries = 100
	subscribeRetryDelay = 200 * time.Millisecond
)
