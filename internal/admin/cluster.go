package admin

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// cluster answers GET /api/v1/cluster: Config.Cluster's view of the
// cluster (viewer role), or 501 when the node is not in one.
func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Cluster == nil {
		writeError(w, http.StatusNotImplemented, "this node is not in a cluster (its configuration has no cluster section)")
		return
	}
	writeJSON(w, http.StatusOK, h.cfg.Cluster())
}

// ErrNodeAlive, wrapped by Config.RemoveClusterNode's error, means the
// node to remove is alive and force was not given: 409.
var ErrNodeAlive = errors.New("the node is alive")

// ErrNotShared is wrapped by a Reload error that means the reload was
// applied on this node, but a change it found could not be sent to the
// rest of the cluster (its queue of security changes full while the
// cluster is unreachable). The reload endpoint answers it with 503 and
// "reloaded": true.
var ErrNotShared = errors.New("applied on this node only")

// removeNode answers POST /api/v1/cluster/nodes/{node}/remove (operator
// role, audited): the node is taken out of the cluster for good
// (docs/cluster.md, "Removing a node"). ?force=true removes a node that
// is alive.
func (h *Handler) removeNode(w http.ResponseWriter, r *http.Request) {
	if h.cfg.RemoveClusterNode == nil {
		writeError(w, http.StatusNotImplemented, "this node is not in a cluster (its configuration has no cluster section)")
		return
	}
	node := r.PathValue("node")
	var force bool
	switch r.URL.Query().Get("force") {
	case "", "false", "0":
	case "true", "1":
		force = true
	default:
		writeError(w, http.StatusBadRequest, "force: want true or false")
		return
	}
	target := clip(node, 200)
	if force {
		target += " (forced)"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	res, err := h.cfg.RemoveClusterNode(ctx, node, force)
	h.record(r, "cluster.remove_node", target, err)
	switch {
	case errors.Is(err, ErrNodeAlive):
		writeError(w, http.StatusConflict, err.Error())
	case err != nil && res == nil:
		writeError(w, http.StatusBadRequest, err.Error())
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error(), "result": res})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}
