package cli

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/tlsconf"
)

// Live reload of the paths of a listener's TLS files (docs/operations.md,
// "Live reload"): the reload's check plan loads the new files through a
// tlsconf.Manager of its own, then the running listener's Manager is
// pointed at them (SetFiles), which loads them again through the path of
// a contents reload. Moving a listener onto or off the built-in CA is
// refused: its CA, server certificate and CRL are created, and the CRL
// re-signed, by what the start-up plan set up.

// listenerIndexRE finds the listener index of a setting's path.
var listenerIndexRE = regexp.MustCompile(`^listeners\[([0-9]+)\]\.tls\.`)

// tlsFilesRefusal says why a changed TLS file path of a listener needs a
// restart, or "" when it applies live.
func tlsFilesRefusal(old, next *config.Config, path string) string {
	m := listenerIndexRE.FindStringSubmatch(path)
	if m == nil {
		return "not a listener's TLS file"
	}
	i, _ := strconv.Atoi(m[1])
	if i >= len(old.Listeners) || i >= len(next.Listeners) {
		return "listeners are bound at start"
	}
	a, b := old.Listeners[i].TLS, next.Listeners[i].TLS
	if a == nil || b == nil {
		return "TLS is turned on or off at start"
	}
	if (a.Cert == "") != (b.Cert == "") || builtinClientCA(a) != builtinClientCA(b) {
		return "moving a listener onto or off the built-in CA needs a restart: its CA, server certificate and CRL are set up at start"
	}
	return ""
}

// builtinClientCA reports whether a listener checks client certificates
// against the built-in CA (it asks for them and names no CA of its own).
func builtinClientCA(t *config.TLS) bool {
	return t.ClientAuth != config.ClientAuthNone && t.ClientCA == "" && t.ClientCADir == ""
}

// setTLSFiles points every running listener whose TLS files differ from
// the check plan's at the check plan's files. It returns the listeners
// changed and those whose new files no longer load (they keep their
// previous files; logged).
func (p *servePlan) setTLSFiles(check *servePlan) (set, failed []string) {
	for _, pl := range p.listeners {
		if pl.mgr == nil {
			continue
		}
		i := slices.IndexFunc(check.listeners, func(c *plannedListener) bool { return c.lc.Name == pl.lc.Name })
		if i < 0 || check.listeners[i].mgr == nil {
			continue
		}
		cur, want := pl.mgr.Files(), check.listeners[i].mgr.Files()
		if sameFiles(cur, want) {
			continue
		}
		if err := pl.mgr.SetFiles(want); err != nil {
			failed = append(failed, pl.lc.Name)
			p.log.Error("serve: the listener's new TLS files no longer load (changed during the reload?); it keeps its previous ones",
				"listener", pl.lc.Name, "err", err)
			continue
		}
		set = append(set, pl.lc.Name)
		p.log.Info("serve: TLS files changed", "listener", pl.lc.Name, "files", fmt.Sprintf("%+v", want))
	}
	return set, failed
}

func sameFiles(a, b tlsconf.Files) bool {
	return slices.Equal(a.Certificates, b.Certificates) && a.CAFile == b.CAFile && a.CAPath == b.CAPath && slices.Equal(a.CRLFiles, b.CRLFiles)
}
