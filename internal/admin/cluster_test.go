package admin

import (
	"encoding/json"
	"net/http"
	"testing"
)

// TestClusterEndpoint: a viewer reads the cluster view Config.Cluster
// gives; without a token, 401; on a node without a cluster, 501.
func TestClusterEndpoint(t *testing.T) {
	h, viewer, _ := newTestHandler(t, Config{Cluster: func() any {
		return map[string]any{"cluster": "plant-a", "node": "n1", "healthy": true, "nodes": []map[string]any{{"node": "n1", "state": "up"}}}
	}})
	rec := do(t, h, "GET", "/api/v1/cluster", viewer, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("viewer: %d %s", rec.Code, rec.Body)
	}
	var got struct {
		Cluster string `json:"cluster"`
		Healthy bool   `json:"healthy"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Cluster != "plant-a" || !got.Healthy {
		t.Fatalf("answer: %v %s", err, rec.Body)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Error("no Cache-Control: no-store")
	}
	if rec := do(t, h, "GET", "/api/v1/cluster", "", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("no token: %d", rec.Code)
	}
	single, viewer2, _ := newTestHandler(t, Config{})
	if rec := do(t, single, "GET", "/api/v1/cluster", viewer2, ""); rec.Code != http.StatusNotImplemented {
		t.Errorf("single node: %d %s", rec.Code, rec.Body)
	}
}
