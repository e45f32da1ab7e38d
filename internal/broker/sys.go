package broker

import (
	"math"
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// The $SYS tree follows Mosquitto's list of topics (mosquitto(8), "BROKER
// STATUS"), with the same names, payload formats and meanings, so that
// tools written for Mosquitto (mosquitto-exporter, dashboards) read Moat
// unchanged; docs/operations.md lists the few it leaves out and why.
// Moat's own counters follow under names Mosquitto does not use.

// sysLoop publishes $SYS topics every SysInterval in force; it ends when
// the server does or when SetLimits turns $SYS off (livelimits.go).
func (s *Server) sysLoop() {
	every := s.limits().SysInterval
	t := time.NewTicker(every)
	defer t.Stop()
	s.publishSys()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.sys.change:
			if s.sysStopped() {
				return
			}
			if d := s.limits().SysInterval; d != every {
				every = d
				t.Reset(d)
			}
		case <-t.C:
			s.publishSys()
		}
	}
}

// sysLoads are the moving averages of the $SYS/broker/load topics
// (stats.sys, under stats.sysMu).
type sysLoads struct {
	at      time.Time
	last    [numLoads]int64
	avg     [numLoads][3]float64 // 1, 5 and 15 minutes
	heapMax uint64
}

// The rates Mosquitto averages, in its order of topics.
const (
	loadConnections = iota
	loadSockets
	loadBytesReceived
	loadBytesSent
	loadMessagesReceived
	loadMessagesSent
	loadPublishReceived
	loadPublishSent
	loadPublishDropped
	numLoads
)

var loadTopics = [numLoads]string{
	"connections", "sockets", "bytes/received", "bytes/sent", "messages/received", "messages/sent",
	"publish/received", "publish/sent", "publish/dropped",
}

var loadWindows = [3]struct {
	name string
	secs float64
}{{"1min", 60}, {"5min", 300}, {"15min", 900}}

// update moves the averages on to now with the counters' current values.
// A load is a rate per minute, averaged exponentially over each window as
// Mosquitto does: avg = rate + exp(-dt/window)·(avg - rate). The first
// call only records the counters.
func (l *sysLoads) update(now time.Time, cur [numLoads]int64) {
	dt := now.Sub(l.at).Seconds()
	if !l.at.IsZero() && dt > 0 {
		for i := range numLoads {
			rate := float64(cur[i]-l.last[i]) * 60 / dt
			for w, win := range loadWindows {
				k := math.Exp(-dt / win.secs)
				l.avg[i][w] = rate + k*(l.avg[i][w]-rate)
			}
		}
	}
	l.at, l.last = now, cur
}

// heapSample reads the bytes of live heap objects from the runtime,
// without stopping the world (unlike runtime.ReadMemStats).
func heapSample() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// dropped sums the drops of every reason.
func (st *Stats) dropped() int64 {
	return st.DroppedQueueFull + st.DroppedQoS0Offline + st.DroppedSlowClient + st.DroppedOversize + st.Expired +
		st.DroppedUnauthorized + st.DroppedSessionEnd
}

// publishSys publishes the $SYS tree as retained messages.
func (s *Server) publishSys() {
	s.stats.sysMu.Lock()
	defer s.stats.sysMu.Unlock()
	l := &s.stats.sys
	st := s.Stats()
	now := s.cfg.Now()
	sum := func(a [3]int64) int64 { return a[0] + a[1] + a[2] }
	l.update(now, [numLoads]int64{
		loadConnections:      st.ClientsTotal,
		loadSockets:          st.SocketsAccepted,
		loadBytesReceived:    st.BytesReceived,
		loadBytesSent:        st.BytesSent,
		loadMessagesReceived: st.PacketsReceived,
		loadMessagesSent:     st.PacketsSent,
		loadPublishReceived:  st.MessagesReceived,
		loadPublishSent:      st.MessagesSent,
		loadPublishDropped:   st.dropped(),
	})
	heap := heapSample()
	l.heapMax = max(l.heapMax, heap)

	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	disconnected := max(st.Sessions-st.ClientsConnected, 0)
	stored := st.Retained + st.Queued
	topics := [][2]string{
		// Mosquitto's names and meanings.
		{"$SYS/broker/version", s.cfg.Version},
		{"$SYS/broker/uptime", strconv.FormatInt(int64(st.Uptime/time.Second), 10) + " seconds"},
		{"$SYS/broker/clients/connected", i(st.ClientsConnected)},
		{"$SYS/broker/clients/active", i(st.ClientsConnected)}, // Mosquitto's deprecated name
		{"$SYS/broker/clients/disconnected", i(disconnected)},
		{"$SYS/broker/clients/inactive", i(disconnected)}, // Mosquitto's deprecated name
		{"$SYS/broker/clients/total", i(st.Sessions)},
		{"$SYS/broker/clients/maximum", i(st.ClientsMaximum)},
		{"$SYS/broker/clients/expired", i(st.SessionsExpired)},
		// messages: MQTT packets of every type, as in Mosquitto.
		{"$SYS/broker/messages/received", i(st.PacketsReceived)},
		{"$SYS/broker/messages/sent", i(st.PacketsSent)},
		{"$SYS/broker/messages/stored", i(stored)},
		{"$SYS/broker/store/messages/count", i(stored)},
		{"$SYS/broker/store/messages/bytes", i(st.RetainedBytes)},
		{"$SYS/broker/bytes/received", i(st.BytesReceived)},
		{"$SYS/broker/bytes/sent", i(st.BytesSent)},
		{"$SYS/broker/publish/messages/received", i(st.MessagesReceived)},
		{"$SYS/broker/publish/messages/sent", i(st.MessagesSent)},
		{"$SYS/broker/publish/messages/dropped", i(st.dropped())},
		{"$SYS/broker/publish/bytes/received", i(sum(st.PayloadReceivedByQoS))},
		{"$SYS/broker/publish/bytes/sent", i(sum(st.PayloadSentByQoS))},
		{"$SYS/broker/subscriptions/count", i(st.Subscriptions)},
		{"$SYS/broker/shared_subscriptions/count", i(st.SharedSubscriptions)},
		{"$SYS/broker/retained messages/count", i(st.Retained)},
		{"$SYS/broker/heap/current", strconv.FormatUint(heap, 10)},
		{"$SYS/broker/heap/maximum", strconv.FormatUint(l.heapMax, 10)},

		// Moat's own.
		{"$SYS/broker/connections/accepted", i(st.ClientsTotal)},
		{"$SYS/broker/connections/refused", i(st.ConnectRefused + st.ConnectionsOverCap)},
		{"$SYS/broker/connections/refused_at_accept", i(st.AcceptRefused)},
		{"$SYS/broker/connections/tls_failures", i(st.TLSFailures)},
		{"$SYS/broker/connections/protocol_errors", i(st.ProtocolErrors)},
		{"$SYS/broker/connections/revoked", i(st.RevokedDisconnects)},
		{"$SYS/broker/messages/queued", i(st.Queued)},
		{"$SYS/broker/messages/dropped", i(st.DroppedQueueFull)},
		{"$SYS/broker/messages/dropped/slow_client", i(st.DroppedSlowClient)},
		{"$SYS/broker/messages/dropped/oversize", i(st.DroppedOversize)},
		{"$SYS/broker/messages/dropped/qos0_offline", i(st.DroppedQoS0Offline)},
		{"$SYS/broker/messages/dropped/unauthorized", i(st.DroppedUnauthorized)},
		{"$SYS/broker/messages/dropped/session_ended", i(st.DroppedSessionEnd)},
		{"$SYS/broker/messages/expired", i(st.Expired)},
		{"$SYS/broker/publishers/held", i(st.PublishersHeld)},
		{"$SYS/broker/publishers/pushbacks", i(st.Pushbacks)},
		{"$SYS/broker/subscribers/slow", i(st.SlowSubscribers)},
		{"$SYS/broker/publishers/cycles", i(st.HoldCycles)},
		{"$SYS/broker/panics", i(st.Panics)},
		{"$SYS/broker/store/failures", i(st.PersistFailures)},
		{"$SYS/broker/store/quarantined", i(st.StoreQuarantines)},
	}
	for k, name := range loadTopics {
		for w, win := range loadWindows {
			topics = append(topics, [2]string{"$SYS/broker/load/" + name + "/" + win.name, strconv.FormatFloat(l.avg[k][w], 'f', 2, 64)})
		}
	}
	if o, ok := s.cfg.Observer.(ObserverCounters); ok {
		for name, v := range o.Counters() {
			topics = append(topics, [2]string{"$SYS/broker/moat/" + name, i(v)})
		}
	}
	for _, t := range topics {
		p := &packet.Publish{Topic: t[0], Payload: []byte(t[1]), Retain: true}
		s.publish(newMessage(p, "", now))
	}
}
