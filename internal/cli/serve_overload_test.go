package cli

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
)

// The overload control's settings reach the broker from both syntaxes;
// the configuration's 0 turns a pushback mark off (the broker's own zero
// would mean its default).
func TestServeOverloadSettings(t *testing.T) {
	for _, tc := range []struct {
		file, text string
		want       broker.Config
	}{
		{"d.yaml", "listeners: [{address: 127.0.0.1:1883, transport: tcp}]\n",
			broker.Config{PushbackMessages: 100, PushbackBytes: 1 << 20, PushbackWait: time.Second}},
		{"d.conf", "listener 1883 127.0.0.1\n",
			broker.Config{PushbackMessages: 100, PushbackBytes: 1 << 20, PushbackWait: time.Second}},
		{"o.yaml", `listeners: [{address: 127.0.0.1:1883, transport: tcp}]
limits: {pushback_messages: 0, pushback_bytes: 0, pushback_wait: 250ms, queue_full_policy: block, max_queued_bytes: 64KiB}
`, broker.Config{PushbackMessages: -1, PushbackBytes: -1, PushbackWait: 250 * time.Millisecond,
			QueueFullPolicy: broker.QueueBlock, MaxQueuedBytes: 64 << 10}},
		{"o.conf", `listener 1883 127.0.0.1
pushback_messages 20
pushback_bytes 64KiB
pushback_wait 3
queue_full_policy block
max_queued_bytes 1000
`, broker.Config{PushbackMessages: 20, PushbackBytes: 64 << 10, PushbackWait: 3 * time.Second,
			QueueFullPolicy: broker.QueueBlock, MaxQueuedBytes: 1000}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := config.Parse(tc.file, []byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			p := &servePlan{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			p.planBroker()
			if len(p.errs) > 0 {
				t.Fatal(p.err())
			}
			b, w := p.broker, tc.want
			if b.PushbackMessages != w.PushbackMessages || b.PushbackBytes != w.PushbackBytes || b.PushbackWait != w.PushbackWait ||
				b.QueueFullPolicy != w.QueueFullPolicy || b.MaxQueuedBytes != w.MaxQueuedBytes {
				t.Errorf("broker config: pushback %d msgs, %d bytes, wait %v, policy %v, max queued bytes %d; want %d, %d, %v, %v, %d",
					b.PushbackMessages, b.PushbackBytes, b.PushbackWait, b.QueueFullPolicy, b.MaxQueuedBytes,
					w.PushbackMessages, w.PushbackBytes, w.PushbackWait, w.QueueFullPolicy, w.MaxQueuedBytes)
			}
		})
	}
}
