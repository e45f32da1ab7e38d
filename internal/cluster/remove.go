package cluster

import "slices"

// removedNodes lists the nodes known to be taken out of the cluster.
func (n *Node) removedNodes() []string {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	var out []string
	for name := range n.adopt.removed {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
