package cli

import (
	"context"

	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/tlsconf"
)

// storeTicketKeys keeps one TLS listener's session ticket keys in the
// durable store, sealed like every record, so that clients resume their
// TLS sessions after a restart (docs/tls.md, "Session resumption"). Each
// listener has keys of its own, under its name.
type storeTicketKeys struct {
	st       *store.Store
	listener string
}

var _ tlsconf.TicketKeyStore = storeTicketKeys{}

func (k storeTicketKeys) LoadTicketKeys() ([]tlsconf.TicketKey, error) {
	tk, err := k.st.TicketKeys(k.listener)
	if err != nil || tk == nil {
		return nil, err
	}
	out := make([]tlsconf.TicketKey, len(tk.Keys))
	for i, key := range tk.Keys {
		out[i] = tlsconf.TicketKey{Key: key.Key, Created: key.Created}
	}
	return out, nil
}

func (k storeTicketKeys) SaveTicketKeys(keys []tlsconf.TicketKey) error {
	tk := &store.TicketKeys{Listener: k.listener, Keys: make([]store.TicketKey, len(keys))}
	for i, key := range keys {
		tk.Keys[i] = store.TicketKey{Key: key.Key, Created: key.Created}
	}
	return k.st.Commit(context.Background(), store.PutTicketKeys{Keys: tk})
}
