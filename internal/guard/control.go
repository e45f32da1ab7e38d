package guard

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ControlSocketName is the ban list's control socket in the data
// directory. A running broker serves it (ServeControl) and `moat ban`
// talks to it (ControlClient), so that a ban added or removed takes
// effect at once and is kept wherever the broker keeps its bans: the
// bans file, or the durable store, which the broker holds open and no
// other process can write while it runs.
//
// Who may use it is decided by the file system, as for the bans file it
// replaces: the socket is created with mode 0600 in the data directory
// (0700), and on Linux the broker also refuses a peer whose user is
// neither its own nor root (SO_PEERCRED).
const ControlSocketName = "bans.sock"

// maxControlRequest bounds one request: a ban is at most a few KiB.
const maxControlRequest = 64 << 10

// controlTimeout bounds one request's exchange; requests are served one
// at a time.
const controlTimeout = 10 * time.Second

// ControlAction is one change made through the control socket, for the
// audit trail.
type ControlAction struct {
	Action string // "ban.add" or "ban.remove"
	Target string // the ban's kind and value, or the ID asked for
	Peer   string // "uid N" where the system reports the peer's user, else "local"
	Result string // "ok" or the error
}

type controlRequest struct {
	Op  string `json:"op"` // "add", "remove" or "list"
	Ban *Ban   `json:"ban,omitempty"`
	ID  string `json:"id,omitempty"`
}

type controlResponse struct {
	Ban   *Ban   `json:"ban,omitempty"`
	Bans  []Ban  `json:"bans,omitempty"`
	Error string `json:"error,omitempty"`
}

// ListenControl opens the control socket at path (mode 0600). A socket
// left there by a broker that did not stop cleanly is replaced; one that
// a running broker answers on is an error, as is a path too long for a
// Unix socket (the caller then serves none: `moat ban` falls back to
// the bans file, and reaches a broker holding the store through the
// admin API only).
func ListenControl(path string) (net.Listener, error) {
	if len(path) > 104 { // sun_path: 104 bytes on the BSDs, 108 on Linux
		return nil, fmt.Errorf("guard: control socket path %s is longer than a Unix socket allows (104 bytes); use a shorter data directory", path)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("guard: another broker serves the control socket %s (two brokers on one data directory?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("guard: removing the stale control socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("guard: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("guard: control socket: %w", err)
	}
	return ln, nil
}

// ServeControl answers `moat ban` on ln until ln is closed, then returns
// nil: one request per connection, one connection at a time, each within
// 10 seconds. Adds and removals go through AddBan and RemoveBan (so they
// take effect at once, are stored before the answer, and honour MaxBans);
// record, when not nil, is called for each of them. The caller owns ln
// and the goroutine running ServeControl.
func (g *Guard) ServeControl(ln net.Listener, record func(ControlAction)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("guard: control socket: %w", err)
		}
		g.serveControlConn(c, record)
	}
}

func (g *Guard) serveControlConn(c net.Conn, record func(ControlAction)) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(controlTimeout))
	peer, allowed := controlPeer(c)
	enc := json.NewEncoder(c)
	if !allowed {
		g.log.Warn("guard: control socket: refused a peer of another user", "peer", peer)
		enc.Encode(controlResponse{Error: "refused: the ban list's control socket serves the broker's own user and root only"})
		return
	}
	var req controlRequest
	dec := json.NewDecoder(io.LimitReader(c, maxControlRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		enc.Encode(controlResponse{Error: "malformed request: " + err.Error()})
		return
	}
	var resp controlResponse
	note := func(action, target string, err error) {
		res := "ok"
		if err != nil {
			res = err.Error()
			resp.Error = res
		}
		if record != nil {
			record(ControlAction{Action: action, Target: target, Peer: peer, Result: res})
		}
	}
	switch req.Op {
	case "list":
		resp.Bans = g.Bans()
	case "add":
		if req.Ban == nil {
			resp.Error = "add: no ban"
			break
		}
		b, err := g.AddBan(*req.Ban)
		note("ban.add", string(req.Ban.Kind)+" "+clip(req.Ban.Value), err)
		if err == nil || errors.Is(err, ErrNotReplicated) {
			resp.Ban = &b
		}
	case "remove":
		b, err := g.RemoveBan(req.ID)
		note("ban.remove", clip(req.ID), err)
		if err == nil || errors.Is(err, ErrNotReplicated) {
			resp.Ban = &b
		}
	default:
		resp.Error = fmt.Sprintf("unknown operation %q", clip(req.Op))
	}
	enc.Encode(resp)
}

// ErrNoControl means that no broker answers on the control socket: none
// runs on this data directory (or it serves no control socket).
var ErrNoControl = errors.New("guard: no running broker answers on the ban list's control socket")

// ControlClient is `moat ban`'s side of the control socket.
type ControlClient struct {
	// Path is the socket: DATA_DIR/bans.sock.
	Path string
}

// Add asks the broker to add b (complete it with NewManualBan) and
// returns the ban as stored.
func (cc ControlClient) Add(b Ban) (Ban, error) {
	r, err := cc.call(controlRequest{Op: "add", Ban: &b})
	if errors.Is(err, ErrNotReplicated) {
		return *r.Ban, err
	}
	if err != nil {
		return Ban{}, err
	}
	if r.Ban == nil {
		return Ban{}, errors.New("guard: control socket: no ban in the answer")
	}
	return *r.Ban, nil
}

// Remove asks the broker to lift the ban with ID id and returns it.
func (cc ControlClient) Remove(id string) (Ban, error) {
	r, err := cc.call(controlRequest{Op: "remove", ID: id})
	if errors.Is(err, ErrNotReplicated) {
		return *r.Ban, err
	}
	if err != nil {
		return Ban{}, err
	}
	if r.Ban == nil {
		return Ban{}, errors.New("guard: control socket: no ban in the answer")
	}
	return *r.Ban, nil
}

// List returns the bans in force in the broker.
func (cc ControlClient) List() ([]Ban, error) {
	r, err := cc.call(controlRequest{Op: "list"})
	return r.Bans, err
}

// call makes one exchange. A socket that is missing or that nobody
// listens on (left by a broker that stopped without removing it) is
// ErrNoControl; an error the broker answered is returned as it said.
func (cc ControlClient) call(req controlRequest) (controlResponse, error) {
	c, err := net.DialTimeout("unix", cc.Path, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return controlResponse{}, fmt.Errorf("%w (%s)", ErrNoControl, cc.Path)
		}
		return controlResponse{}, fmt.Errorf("guard: control socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(controlTimeout + 5*time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return controlResponse{}, fmt.Errorf("guard: control socket: %w", err)
	}
	var resp controlResponse
	dec := json.NewDecoder(bufio.NewReader(c))
	if err := dec.Decode(&resp); err != nil {
		return controlResponse{}, fmt.Errorf("guard: control socket: reading the answer: %w", err)
	}
	if resp.Error != "" && resp.Ban != nil {
		// In force in the broker, not on the other nodes (AddBan).
		return resp, fmt.Errorf("%w: %s", ErrNotReplicated, strings.TrimPrefix(resp.Error, ErrNotReplicated.Error()+": "))
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	for i := range resp.Bans {
		if err := resp.Bans[i].validate(); err != nil {
			return controlResponse{}, fmt.Errorf("guard: control socket: %w", err)
		}
	}
	return resp, nil
}
