// Command streamdump reads back the durable message stream of a stopped
// cluster: the JetStream stores a kill-series run left (runs/N/node*/data)
// or any node data directories of one cluster. It copies each node's
// store to a temporary directory, starts the embedded NATS servers on
// those copies as one cluster on loopback, and prints the stream's
// records in order: their sequence, store time, ID, origin and messages.
// The originals are not changed.
//
//	go run ./scripts/killseries/streamdump -run /tmp/moat-killseries/runs/28 -from 1690 -to 1800 [-msgs]
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	"github.com/moatmq/moat/internal/cluster"
)

func main() {
	run := flag.String("run", "", "a kill-series run directory (holding node*/data and node*/moat.yaml)")
	stream := flag.String("stream", "moat_msgs", "the stream to read")
	from := flag.Uint64("from", 1, "the first stream sequence to print")
	to := flag.Uint64("to", 0, "the last stream sequence to print (0: the stream's last)")
	msgs := flag.Bool("msgs", false, "print each message of a record on its own line")
	consumers := flag.Bool("consumers", false, "print the stream's consumers (delivered, acknowledgement floor, pending) first")
	wait := flag.Duration("wait", 60*time.Second, "how long to wait for the stream to elect a leader")
	flag.Parse()
	if *run == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := dump(*run, *stream, *from, *to, *msgs, *consumers, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "streamdump:", err)
		os.Exit(1)
	}
}

// node is one node's store as the run left it.
type node struct {
	name, cluster string
	store         string // DATA_DIR/cluster
	key           string // hex
}

func findNodes(run string) ([]node, error) {
	dirs, err := filepath.Glob(filepath.Join(run, "node*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(dirs)
	var nodes []node
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "moat.yaml"))
		if err != nil {
			continue
		}
		var cfg struct {
			DataDir string `yaml:"data_dir"`
			Cluster struct {
				Name string `yaml:"name"`
				Node string `yaml:"node"`
			} `yaml:"cluster"`
		}
		if err := yaml.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %v", d, err)
		}
		data := cfg.DataDir
		if !filepath.IsAbs(data) {
			data = filepath.Join(d, data)
		}
		store := filepath.Join(data, "cluster")
		key, err := os.ReadFile(filepath.Join(store, "jetstream.key"))
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, node{name: cfg.Cluster.Node, cluster: cfg.Cluster.Name, store: store, key: strings.TrimSpace(string(key))})
	}
	if len(nodes) == 0 {
		return nil, errors.New(run + ": no node*/moat.yaml with a cluster store")
	}
	return nodes, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func dump(run, streamName string, from, to uint64, msgs, consumers bool, wait time.Duration) error {
	nodes, err := findNodes(run)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "streamdump")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ports := make([]int, len(nodes))
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	var servers []*server.Server
	defer func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}()
	for i, nd := range nodes {
		if _, err := hex.DecodeString(nd.key); err != nil {
			return fmt.Errorf("%s: key: %v", nd.name, err)
		}
		dir := filepath.Join(tmp, nd.name)
		if err := os.CopyFS(dir, os.DirFS(filepath.Join(nd.store, "jetstream"))); err != nil {
			return err
		}
		opts := &server.Options{ServerName: nd.name, Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
			JetStreamKey: nd.key, JetStreamCipher: server.AES, NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: nd.cluster, Host: "127.0.0.1", Port: ports[i]}}
		for _, p := range ports {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: "127.0.0.1:" + strconv.Itoa(p)})
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return fmt.Errorf("%s: %v", nd.name, err)
		}
		servers = append(servers, s)
		go s.Start()
	}
	if !servers[0].ReadyForConnections(30 * time.Second) {
		return errors.New("the first server did not start")
	}
	nc, err := nats.Connect(servers[0].ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var st jetstream.Stream
	var info *jetstream.StreamInfo
	for {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		st, err = js.Stream(actx, streamName)
		if err == nil {
			info, err = st.Info(actx)
		}
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stream %s: %v", streamName, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Printf("# %s: records %d to %d (%d), last stored %s\n", streamName, info.State.FirstSeq, info.State.LastSeq,
		info.State.Msgs, info.State.LastTime.UTC().Format("15:04:05.000"))
	if consumers {
		lctx, lcancel := context.WithTimeout(context.Background(), wait)
		defer lcancel()
		names := st.ConsumerNames(lctx)
		for name := range names.Name() {
			// Asked again while it goes unanswered (no leader yet),
			// not when refused.
			var c jetstream.Consumer
			for c == nil && lctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(lctx, 3*time.Second)
				c, err = st.Consumer(cctx, name)
				ccancel()
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					break
				}
			}
			if err != nil {
				fmt.Printf("# consumer %s: %v\n", name, err)
				continue
			}
			ci := c.CachedInfo()
			fmt.Printf("# consumer %s: delivered %d, acknowledgement floor %d, pending acknowledgement %d, redelivered %d, pending %d\n",
				name, ci.Delivered.Stream, ci.AckFloor.Stream, ci.NumAckPending, ci.NumRedelivered, ci.NumPending)
		}
		if err := names.Err(); err != nil {
			fmt.Printf("# consumers: %v\n", err)
		}
	}
	if to == 0 || to > info.State.LastSeq {
		to = info.State.LastSeq
	}
	for seq := max(from, info.State.FirstSeq); seq <= to; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			fmt.Printf("%d\t%v\n", seq, err)
			continue
		}
		at := m.Time.UTC().Format("15:04:05.000")
		if streamName != "moat_msgs" {
			fmt.Printf("%d\t%s\t%s\t%d bytes\n", seq, at, m.Subject, len(m.Data))
			continue
		}
		ri, err := cluster.DescribeRecord(m.Subject, m.Header, m.Data)
		if err != nil {
			fmt.Printf("%d\t%s\t%s\t%v\n", seq, at, m.Subject, err)
			continue
		}
		first, last := ri.Messages[0], ri.Messages[len(ri.Messages)-1]
		fmt.Printf("%d\t%s\t%s\tn=%d\t%s %q .. %s %q\tfirst published %s\n", seq, at, ri.ID, len(ri.Messages),
			first.Topic, first.Payload, last.Topic, last.Payload, first.Sent.UTC().Format("15:04:05.000"))
		if msgs {
			for _, rm := range ri.Messages {
				fmt.Printf("\t%s\t%s\t%q\tfrom %s\tpublished %s\n", rm.Ref, rm.Topic, rm.Payload, rm.From, rm.Sent.UTC().Format("15:04:05.000"))
			}
		}
	}
	return nil
}
