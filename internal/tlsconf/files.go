package tlsconf

import "slices"

// Files are the files a Manager loads, the ListenerConfig fields of the
// same names: they can be replaced at run time (SetFiles), as their
// contents can (Reload). The rest of the ListenerConfig is fixed by New.
type Files struct {
	Certificates []KeyPair
	CAFile       string
	CAPath       string
	CRLFiles     []string
}

// Files returns the files the Manager loads. Safe for concurrent use.
func (m *Manager) Files() Files {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	return Files{
		Certificates: slices.Clone(m.cfg.Certificates), CAFile: m.cfg.CAFile, CAPath: m.cfg.CAPath,
		CRLFiles: slices.Clone(m.cfg.CRLFiles),
	}
}

// SetFiles makes the Manager load f instead of the files it loads now,
// through the same path as Reload: every file is read and checked first,
// and on any problem (a file that does not load, a combination the
// ListenerConfig does not allow) the previous files stay in force and
// the error is returned. Established connections are not touched, except
// that live sessions the new CAs and CRLs no longer accept are dropped
// through their Watch callback, as on Reload. The files are watched from
// then on. Safe for concurrent use.
func (m *Manager) SetFiles(f Files) error {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	next := m.cfg
	next.Certificates = slices.Clone(f.Certificates)
	next.CAFile, next.CAPath = f.CAFile, f.CAPath
	next.CRLFiles = slices.Clone(f.CRLFiles)
	if err := next.validate(); err != nil {
		return err
	}
	prev := m.cfg
	m.setFilesLocked(&next)
	if err := m.reloadLocked(); err != nil {
		m.setFilesLocked(&prev)
		m.lastSig = m.fileSignature()
		m.lastHash = m.contentHash()
		return err
	}
	return nil
}

// setFilesLocked copies the file fields of c into the Manager's
// configuration; reloadMu is held (the loading code reads them under it).
func (m *Manager) setFilesLocked(c *ListenerConfig) {
	m.cfg.Certificates, m.cfg.CAFile, m.cfg.CAPath, m.cfg.CRLFiles = c.Certificates, c.CAFile, c.CAPath, c.CRLFiles
}
