package listener

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestWebSocketPahoGo connects the Eclipse Paho Go client (gorilla
// WebSocket underneath) over ws:// and wss:// to a fake broker.
func TestWebSocketPahoGo(t *testing.T) {
	p := newTestPKI(t)
	for _, tr := range []Transport{WebSocket, WebSocketTLS} {
		t.Run(tr.String(), func(t *testing.T) {
			cfg := Config{Transport: tr}
			if tr == WebSocketTLS {
				cfg.TLS = p.serverTLS()
			}
			l := listen(t, cfg)
			ch := acceptAsync(l)
			protoCh := make(chan string, 1)
			go func() {
				r := <-ch
				if r.err != nil {
					protoCh <- "accept: " + r.err.Error()
					return
				}
				proto, err := fakeMQTT(r.c)
				if err != nil {
					proto = err.Error()
				}
				protoCh <- proto
			}()
			opts := mqtt.NewClientOptions().
				AddBroker(wsURL(l, "/mqtt")).
				SetClientID("paho-go").
				SetConnectTimeout(5 * time.Second).
				SetAutoReconnect(false).
				SetProtocolVersion(4)
			if tr == WebSocketTLS {
				opts.SetTLSConfig(p.clientTLS(true))
			}
			c := mqtt.NewClient(opts)
			tok := c.Connect()
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			c.Disconnect(100)
			if proto := <-protoCh; proto != "MQTT" {
				t.Fatalf("fake broker: %s", proto)
			}
		})
	}
}
