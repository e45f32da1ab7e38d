package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/config"
)

// nodeConfig is the cluster node's Config from the cluster section cc,
// with its JetStream files under dir; TLS and the spill are planCluster's.
// (cluster.Start drops the node's own address from the peers.)
func nodeConfig(cc config.Cluster, dir string, log *slog.Logger) cluster.Config {
	return cluster.Config{Name: cc.Name, Node: cc.Node, Listen: cc.Listen, Peers: cc.Peers, StoreDir: filepath.Join(dir, "jetstream"),
		NATSURL: cc.NATSURL, Credentials: cc.Credentials, Logger: log, Version: Version, AdoptAfter: time.Duration(cc.AdoptAfter),
		CatchUpIdle: time.Duration(cc.CatchUpIdle), CatchUpMax: time.Duration(cc.CatchUpMax)}
}

// planCluster builds the cluster membership from cfg.Cluster
// (docs/cluster.md) and, for serve, starts it: the broker's Config gets
// the Node, and startBroker attaches the two. Without a cluster section
// nothing happens. The routes between nodes need mutual TLS: the files
// of cluster.tls, else the node certificate in DATA_DIR/cluster verified
// against the built-in CA every node shares. Plain routes are accepted
// only when every route address is loopback (all nodes on one host) and
// no node certificate exists, with a warning: the traffic then never
// leaves the host.
func (p *servePlan) planCluster() {
	cc := p.cfg.Cluster
	if !cc.Enabled() {
		return
	}
	dir := filepath.Join(p.cfg.DataDir, "cluster")
	cfg := nodeConfig(cc, dir, p.log)
	if cc.NATSURL != "" {
		if cc.Credentials != "" {
			if _, err := os.ReadFile(cc.Credentials); err != nil {
				p.problem("cluster.credentials", "", err)
			}
		}
	} else {
		cert, key, ca := cc.TLS.Cert, cc.TLS.Key, cc.TLS.CA
		if cert == "" {
			cert, key = filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key")
		}
		if ca == "" {
			ca = filepath.Join(p.cfg.DataDir, "ca", "ca.pem")
		}
		_, statErr := os.Stat(cert)
		switch {
		case cc.TLS.Cert == "" && errors.Is(statErr, os.ErrNotExist) && cc.AllLoopback():
			p.warnings = append(p.warnings, "cluster routes are PLAIN (no TLS, no authentication of nodes): allowed only because every route "+
				"address is loopback; give each node a certificate (docs/cluster.md) before spreading the cluster over hosts")
		default:
			t, err := routeTLS(cert, key, ca)
			if err != nil {
				p.problem("cluster.tls", "", fmt.Errorf("cluster routes need mutual TLS: %w; issue this node a certificate "+
					"from the CA every node shares, e.g. `moat ca issue server NODE-HOST --out %s` (docs/cluster.md)", err,
					filepath.Join(dir, "node")))
				return
			}
			cfg.RouteTLS = t
		}
	}
	if p.check || len(p.errs) > 0 {
		return
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		p.problem("cluster", "", err)
		return
	}
	// The key seals the embedded server's JetStream files and, with an
	// external NATS as well, the retained changes kept on disk while
	// the cluster is unreachable.
	key, err := clusterStoreKey(filepath.Join(dir, clusterStoreKeyFile))
	if err != nil {
		p.problem("cluster", "", err)
		return
	}
	cfg.RetainedSpill, cfg.RetainedSpillKey = filepath.Join(dir, "retained-pending.db"), key
	if cc.NATSURL == "" {
		cfg.StoreKey = key
		cfg.SyncAlways, cfg.SyncInterval = clusterSync(p.cfg.Persistence.Enabled, p.cfg.Persistence.Sync, p.cfg.Persistence.BatchInterval.D())
	}
	node, err := cluster.Start(cfg)
	if err != nil {
		p.problem("cluster", "", err)
		return
	}
	p.cluster = node
	p.broker.Cluster = node
	p.cleanup = append(p.cleanup, node.Close)
	p.planClusterSecurity(dir)
}

// routeTLS loads the node's certificate and the CA bundle of the routes.
func routeTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", caFile)
	}
	// A node proves itself with a server certificate of the shared CA,
	// in both directions: the CA's device certificates (client
	// authentication only) must never admit a device as a node, and the
	// built-in CA issues no certificate with both uses.
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("cluster: the other node sent no certificate")
		}
		var chain []*x509.Certificate
		for _, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("cluster: the other node's certificate: %w", err)
			}
			chain = append(chain, c)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool,
		ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: func(raw [][]byte, chains [][]*x509.Certificate) error {
			return verify(raw, chains)
		}, MinVersion: tls.VersionTLS12}, nil
}
