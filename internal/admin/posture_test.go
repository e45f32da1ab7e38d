package admin

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
)

// handshakeBroker is a real broker whose Stats report given handshakes.
type handshakeBroker struct {
	Broker
	hs []broker.TLSCount
}

func (b handshakeBroker) Stats() broker.Stats {
	st := b.Broker.Stats()
	st.TLSHandshakes = b.hs
	return st
}

// TestPosture: the posture endpoint reports the FIPS mode, the share of
// post-quantum handshakes since start, the detections by detector and
// the OCSP state of each listener as the configuration gives them, with
// empty lists rather than null.
func TestPosture(t *testing.T) {
	next := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	h, viewer, _ := newTestHandler(t, Config{Posture: func() Posture {
		return Posture{Profile: "industry", FIPSMode: "on", FIPSModule: "v1.0.0", AuthFailures: 3, Detections: 2,
			DetectionsBy: map[string]int64{"auth_failures": 2},
			OCSP: []OCSPInfo{{Listener: "devices", Mode: "fail-closed", Responses: map[string]uint64{"good": 5},
				Staples: []StapleInfo{{Certificate: "server.pem", Good: true, NextUpdate: next}}}}}
	}})
	h.cfg.Broker = handshakeBroker{Broker: h.cfg.Broker, hs: []broker.TLSCount{
		{Version: "TLS 1.3", Group: "X25519MLKEM768", N: 3}, {Version: "TLS 1.3", Group: "X25519", N: 1},
	}}
	rec := do(t, h, http.MethodGet, "/api/v1/posture", viewer, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("posture: %d %s", rec.Code, rec.Body)
	}
	var p struct {
		Profile    string           `json:"profile"`
		FIPSMode   string           `json:"fips_mode"`
		Handshakes int64            `json:"tls_handshakes"`
		PQ         int64            `json:"post_quantum_handshakes"`
		PQPct      float64          `json:"post_quantum_handshakes_percent"`
		Detections int64            `json:"detections"`
		ByJSON     map[string]int64 `json:"detections_by_detector"`
		OCSP       []OCSPInfo       `json:"ocsp"`
		CRLs       []CRLInfo        `json:"crls"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Profile != "industry" || p.FIPSMode != "on" || p.Handshakes != 4 || p.PQ != 3 || p.PQPct != 75 || p.Detections != 2 || p.ByJSON["auth_failures"] != 2 {
		t.Errorf("posture %+v", p)
	}
	if len(p.OCSP) != 1 || p.OCSP[0].Mode != "fail-closed" || !p.OCSP[0].Staples[0].Good || !p.OCSP[0].Staples[0].NextUpdate.Equal(next) {
		t.Errorf("OCSP %+v", p.OCSP)
	}
	if p.CRLs == nil {
		t.Error("crls is null; want an empty list")
	}
}
