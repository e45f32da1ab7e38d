package admin

import (
	"crypto/fips140"
	"net/http"
	"strings"
	"time"
)

// nearExpiry is when a client certificate counts as near its expiry.
const nearExpiry = 30 * 24 * time.Hour

type postureJSON struct {
	Posture
	// FIPSRuntime is crypto/fips140.Enabled() in this process.
	FIPSRuntime bool `json:"fips_runtime"`
	// TLS in use by the connected clients.
	TLSClients     int            `json:"tls_clients"`
	PlainClients   int            `json:"plain_clients"`
	TLSVersions    map[string]int `json:"tls_versions"`
	TLSGroups      map[string]int `json:"tls_groups"`
	PostQuantum    int            `json:"post_quantum_clients"`
	PostQuantumPct float64        `json:"post_quantum_percent"`
	// Successful TLS handshakes since start, and those with a
	// post-quantum key exchange.
	Handshakes            int64   `json:"tls_handshakes"`
	PostQuantumHandshakes int64   `json:"post_quantum_handshakes"`
	PostQuantumHSPct      float64 `json:"post_quantum_handshakes_percent"`
	// Connected clients whose certificate ends within 30 days.
	NearExpiry []ClientJSON `json:"clients_near_expiry"`
}

// isPostQuantum reports whether a key exchange group name is a hybrid
// with ML-KEM.
func isPostQuantum(group string) bool {
	return strings.Contains(group, "MLKEM") || strings.Contains(group, "Kyber")
}

func (h *Handler) posture(w http.ResponseWriter, r *http.Request) {
	var p postureJSON
	if h.cfg.Posture != nil {
		p.Posture = h.cfg.Posture()
	}
	p.FIPSRuntime = fips140.Enabled()
	p.FIPS = p.FIPS || p.FIPSRuntime
	p.TLSVersions, p.TLSGroups = map[string]int{}, map[string]int{}
	p.NearExpiry = []ClientJSON{}
	now := h.cfg.Now()
	for _, c := range h.clientList() {
		if c.TLSVersion == "" {
			p.PlainClients++
			continue
		}
		p.TLSClients++
		p.TLSVersions[c.TLSVersion]++
		if c.TLSGroup != "" {
			p.TLSGroups[c.TLSGroup]++
			if isPostQuantum(c.TLSGroup) {
				p.PostQuantum++
			}
		}
		if c.Certificate != nil && c.Certificate.NotAfter.Sub(now) < nearExpiry {
			p.NearExpiry = append(p.NearExpiry, c)
		}
	}
	if p.TLSClients > 0 {
		p.PostQuantumPct = 100 * float64(p.PostQuantum) / float64(p.TLSClients)
	}
	for _, hs := range h.cfg.Broker.Stats().TLSHandshakes {
		p.Handshakes += hs.N
		if isPostQuantum(hs.Group) {
			p.PostQuantumHandshakes += hs.N
		}
	}
	if p.Handshakes > 0 {
		p.PostQuantumHSPct = 100 * float64(p.PostQuantumHandshakes) / float64(p.Handshakes)
	}
	if p.OCSP == nil {
		p.OCSP = []OCSPInfo{}
	}
	if p.CRLs == nil {
		p.CRLs = []CRLInfo{}
	}
	writeJSON(w, http.StatusOK, p)
}
