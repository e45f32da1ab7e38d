package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/tlsconf"
)

// Exit statuses of moat acl test.
const (
	aclExitAllow = 0
	aclExitDeny  = 1
	aclExitUsage = 2
)

func init() {
	register(newACLCommand)
}

func newACLCommand(stdio Stdio) *cobra.Command {
	acl := &cobra.Command{
		Use:   "acl",
		Short: "Inspect access-control policies",
	}
	acl.AddCommand(newACLTestCommand(stdio))
	return acl
}

type aclTestFlags struct {
	config, aclFile, rules string
	user, clientID, cert   string
	groups                 []string
	addr, listener         string
	qos                    int
	retain                 bool
}

func newACLTestCommand(stdio Stdio) *cobra.Command {
	var f aclTestFlags
	usage := func(err error) error { return &exitError{aclExitUsage, err} }
	cmd := &cobra.Command{
		Use:   "test [flags] publish|subscribe|receive TOPIC",
		Short: "Show whether a client may publish, subscribe or receive, and which rule decides",
		Long: `Decide one request against an access policy and print the decision and the
rule that made it. The policy comes from --config (Moat YAML: its acl
section, or without one the default policy serve applies, DATA_DIR/acl.yaml;
or a mosquitto.conf with acl_file), --rules (a YAML file with rules:) or
--acl-file (a Mosquitto acl_file).

Without --user the client is anonymous; with --cert and no --user its
username is the certificate's common name. For subscribe, TOPIC is a filter
and may be $share/GROUP/FILTER.

Exit status: 0 allowed, 1 denied, 2 usage or policy error.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usage(fmt.Errorf("acl test: want ACTION TOPIC (publish, subscribe or receive, then a topic), got %d arguments", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := runACLTest(stdio, &f, args[0], args[1])
			if err != nil {
				return usage(err)
			}
			if code != aclExitAllow {
				return &quietExit{code: code, err: errors.New("acl test: denied")}
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(fmt.Errorf("acl test: %w", err)) })
	fl := cmd.Flags()
	fl.StringVarP(&f.config, "config", "c", "", "configuration file: Moat YAML (its acl section, or the default policy without one), or mosquitto.conf with acl_file")
	fl.StringVar(&f.aclFile, "acl-file", "", "Mosquitto acl_file to test")
	fl.StringVar(&f.rules, "rules", "", "YAML file with Moat rules (rules: [...], optional acl_file:)")
	fl.StringVarP(&f.user, "user", "u", "", "verified username (empty: anonymous)")
	fl.StringVarP(&f.clientID, "client-id", "i", "", "client identifier (default: the username, or moat-acl-test)")
	fl.StringVar(&f.cert, "cert", "", "PEM file whose first certificate is the client's")
	fl.StringArrayVar(&f.groups, "group", nil, "group of the identity (repeat for several)")
	fl.StringVar(&f.addr, "addr", "", "client IP address")
	fl.StringVar(&f.listener, "listener", "", "listener name")
	fl.IntVarP(&f.qos, "qos", "q", 0, "QoS of the request (0, 1 or 2)")
	fl.BoolVarP(&f.retain, "retain", "r", false, "the message is retained")
	return cmd
}

func runACLTest(stdio Stdio, f *aclTestFlags, actionArg, topic string) (int, error) {
	action, ok := authz.ParseAction(actionArg)
	if !ok {
		return 0, fmt.Errorf("acl test: unknown action %q (want publish, subscribe or receive)", actionArg)
	}
	req := authz.Request{Action: action, Topic: topic, Retain: f.retain}
	if f.qos < 0 || f.qos > 2 {
		return 0, fmt.Errorf("acl test: --qos %d: want 0, 1 or 2", f.qos)
	}
	req.QoS = byte(f.qos)
	if action == authz.Subscribe {
		req.ShareGroup, req.Topic = authz.SplitShared(topic)
		if err := authz.ValidFilter(req.Topic); err != nil {
			return 0, fmt.Errorf("acl test: topic filter %q: %v", topic, err)
		}
	} else if err := authz.ValidFilter(topic); err != nil || strings.ContainsAny(topic, "+#") {
		return 0, fmt.Errorf("acl test: topic name %q: a %s needs a topic name without wildcards", topic, action)
	}
	subj, err := aclTestSubject(f)
	if err != nil {
		return 0, err
	}
	req.Subject = subj
	policy, source, err := loadACLPolicy(f)
	if err != nil {
		return 0, err
	}
	d := authz.Decision{Allow: true, Reason: "access control is off (acl.allow_all): everything is allowed", Rule: "none"}
	if policy != nil {
		d = policy.Decide(req)
	}
	verdict, code := "deny", aclExitDeny
	if d.Allow {
		verdict, code = "allow", aclExitAllow
	}
	who := "anonymous"
	if !subj.Anonymous {
		who = "user " + subj.Username
	}
	fmt.Fprintf(stdio.Out, "%s %s %s\n", verdict, action, topic)
	fmt.Fprintf(stdio.Out, "  client: %s, client ID %s\n", who, subj.ClientID)
	fmt.Fprintf(stdio.Out, "  policy: %s\n  rule:   %s\n  reason: %s\n", source, d.Rule, d.Reason)
	return code, nil
}

func aclTestSubject(f *aclTestFlags) (*authz.Subject, error) {
	s := &authz.Subject{Username: f.user, ClientID: f.clientID, Groups: f.groups, Listener: f.listener}
	if f.cert != "" {
		cert, err := readFirstCert(f.cert)
		if err != nil {
			return nil, err
		}
		s.Cert = certFields(cert)
		if s.Username == "" {
			s.Username = s.Cert.CN
		}
	}
	s.Anonymous = s.Username == ""
	if s.ClientID == "" {
		s.ClientID = s.Username
		if s.ClientID == "" {
			s.ClientID = "moat-acl-test"
		}
	}
	if f.addr != "" {
		a, err := netip.ParseAddr(f.addr)
		if err != nil {
			return nil, fmt.Errorf("acl test: --addr %q is not an IP address", f.addr)
		}
		s.Addr = a
	}
	return s, nil
}

func readFirstCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acl test: --cert: %w", err)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("acl test: --cert %s holds no PEM CERTIFICATE block", path)
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("acl test: --cert %s: %w", path, err)
			}
			return c, nil
		}
	}
}

// certFields returns the certificate fields rules select on. The issuer
// is in the same distinguished-name form Moat uses for certificate
// identities.
func certFields(c *x509.Certificate) authz.Cert {
	out := authz.Cert{CN: c.Subject.CommonName, O: c.Subject.Organization, OU: c.Subject.OrganizationalUnit,
		DNS: c.DNSNames, Email: c.EmailAddresses}
	var spiffe []string
	for _, u := range c.URIs {
		out.URI = append(out.URI, u.String())
		if u.Scheme == "spiffe" {
			spiffe = append(spiffe, u.String())
		}
	}
	if len(spiffe) == 1 {
		out.SPIFFE = spiffe[0]
	}
	if dn, err := tlsconf.FormatDN(c.RawIssuer); err == nil {
		out.Issuer = dn
	}
	return out
}

// maxPolicyFile bounds the configuration and rules files read here.
const maxPolicyFile = authz.MaxACLFileSize

func readPolicyFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxPolicyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxPolicyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxPolicyFile)
	}
	return data, nil
}

// loadACLPolicy builds the policy from the flags and names its source. A
// nil policy without an error is acl.allow_all: everything is allowed.
func loadACLPolicy(f *aclTestFlags) (*authz.Policy, string, error) {
	n := 0
	for _, s := range []string{f.config, f.aclFile, f.rules} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, "", errors.New("acl test: give exactly one of --config, --rules and --acl-file")
	}
	var (
		spec   authz.Spec
		source string
	)
	switch {
	case f.aclFile != "":
		spec.ACLFile, source = f.aclFile, f.aclFile
	case f.rules != "":
		data, err := readPolicyFile(f.rules)
		if err != nil {
			return nil, "", fmt.Errorf("acl test: --rules: %w", err)
		}
		if err := decodeStrict(data, &spec); err != nil {
			return nil, "", fmt.Errorf("acl test: --rules %s: %w", f.rules, err)
		}
		source = f.rules
	default:
		s, src, allowAll, err := aclSpecFromConfig(f.config)
		if err != nil {
			return nil, "", err
		}
		if allowAll {
			if len(s.Rules) > 0 || s.ACLFile != "" {
				return nil, "", fmt.Errorf("acl test: %s: acl.allow_all: true with rules or an acl_file; remove one", f.config)
			}
			return nil, f.config + " (acl.allow_all: no access policy)", nil
		}
		spec, source = s, src
	}
	return buildPolicy(spec, source)
}

// buildPolicy compiles a Spec read from the file named source and returns
// the policy with a description of its sources. A relative acl_file path
// is used as written (relative to the working directory), as Mosquitto
// does. moat serve builds its policy the same way.
func buildPolicy(spec authz.Spec, source string) (*authz.Policy, string, error) {
	opts := authz.Options{Rules: spec.Rules, RulesSource: source}
	desc := source
	if spec.ACLFile != "" {
		data, err := readPolicyFile(spec.ACLFile)
		if err != nil {
			return nil, "", fmt.Errorf("acl: acl_file: %w", err)
		}
		a, err := authz.ParseACLFile(spec.ACLFile, bytes.NewReader(data))
		if err != nil {
			return nil, "", err
		}
		opts.ACL = a
		if spec.ACLFile != source {
			desc = source + " (acl_file " + spec.ACLFile + ")"
		}
	}
	if len(spec.Rules) == 0 && opts.ACL == nil {
		return nil, "", fmt.Errorf("acl: %s defines no rules and no acl_file", source)
	}
	p, err := authz.New(opts)
	if err != nil {
		return nil, "", err
	}
	return p, desc, nil
}

// decodeStrict decodes YAML refusing unknown keys, so that a misspelt
// field of a rule is an error rather than a rule that matches more.
func decodeStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// aclSpecFromConfig reads the access policy of a configuration file: the
// acl section of Moat YAML (or, without one, the default policy serve
// applies: DATA_DIR/acl.yaml, or the built-in text it writes there), or
// the acl_file key of a mosquitto.conf. source names where the policy
// came from; allowAll reports acl.allow_all (no policy).
func aclSpecFromConfig(path string) (spec authz.Spec, source string, allowAll bool, err error) {
	data, err := readPolicyFile(path)
	if err != nil {
		return authz.Spec{}, "", false, fmt.Errorf("acl test: --config: %w", err)
	}
	if config.DetectFormat(path, data) == config.FormatYAML {
		var top map[string]yaml.Node
		if err := yaml.Unmarshal(data, &top); err != nil {
			return authz.Spec{}, "", false, fmt.Errorf("acl test: %s: %w", path, err)
		}
		node, ok := top["acl"]
		if !ok {
			cfg, err := config.Load(path)
			if err != nil {
				return authz.Spec{}, "", false, fmt.Errorf("acl test: %w", err)
			}
			file := filepath.Join(cfg.DataDir, defaultPolicyName)
			data, err := readPolicyFile(file)
			switch {
			case errors.Is(err, os.ErrNotExist):
				return defaultPolicySpec(), "built-in default policy (" + path + " has no acl section; serve writes it to " + file + ")", false, nil
			case err != nil:
				return authz.Spec{}, "", false, fmt.Errorf("acl test: the default policy: %w", err)
			}
			if err := decodeStrict(data, &spec); err != nil {
				return authz.Spec{}, "", false, fmt.Errorf("acl test: %s: %w", file, err)
			}
			return spec, file + " (the default policy: " + path + " has no acl section)", false, nil
		}
		raw, err := yaml.Marshal(&node)
		if err != nil {
			return authz.Spec{}, "", false, fmt.Errorf("acl test: %s: acl: %w", path, err)
		}
		var sec aclSection
		if err := decodeStrict(raw, &sec); err != nil {
			return authz.Spec{}, "", false, fmt.Errorf("acl test: %s: acl: %w", path, err)
		}
		return sec.Spec, path, sec.AllowAll, nil
	}
	var files []string
	for line := range strings.SplitSeq(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && fields[0] == "acl_file" {
			p := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "acl_file"))
			if len(files) == 0 || files[len(files)-1] != p {
				files = append(files, p)
			}
		}
	}
	switch len(files) {
	case 0:
		return authz.Spec{}, "", false, fmt.Errorf("acl test: %s has no acl_file line", path)
	case 1:
		return authz.Spec{ACLFile: files[0]}, path, false, nil
	}
	return authz.Spec{}, "", false, fmt.Errorf("acl test: %s has %d acl_file lines (%s); choose one with --acl-file", path, len(files), strings.Join(files, ", "))
}
