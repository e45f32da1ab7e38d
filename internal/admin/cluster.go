package admin

import "net/http"

// cluster answers GET /api/v1/cluster: Config.Cluster's view of the
// cluster (viewer role), or 501 when the node is not in one.
func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Cluster == nil {
		writeError(w, http.StatusNotImplemented, "this node is not in a cluster (its configuration has no cluster section)")
		return
	}
	writeJSON(w, http.StatusOK, h.cfg.Cluster())
}
