package store

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// State is everything a store holds, decrypted: what Open recovered.
type State struct {
	// Sessions by client ID, with their deliveries in Seq order and
	// their inbound QoS 2 identifiers.
	Sessions map[string]*SessionState
	// Messages by ID: the messages the deliveries refer to.
	Messages map[uint64]*Message
	Retained []*Retained
	Wills    []*Will
	// TicketKeys by listener name (nil when there are none).
	TicketKeys map[string]*TicketKeys
	// Bans is the broker's ban list (bans.go).
	Bans []*Ban
}

// SessionState is one session and what it holds.
type SessionState struct {
	Session    *Session
	Deliveries []*Delivery // by Seq: in-flight first, as they were sent, then queued
	Inbound    []uint16    // inbound QoS 2 packet identifiers awaiting PUBREL
}

func (st *State) session(id string) *SessionState {
	ss := st.Sessions[id]
	if ss == nil {
		ss = &SessionState{}
		st.Sessions[id] = ss
	}
	return ss
}

// Report is the result of checking every record.
type Report struct {
	Counter  uint64         // commit counter
	Records  uint64         // records, the header state excluded
	Counts   map[string]int // records by kind
	Problems []string       // empty when the store is sound
	state    *State
}

func (r *Report) problem(format string, args ...any) {
	const maxProblems = 1000
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// scan decrypts and checks every record: each opens under its own bucket,
// key and version (no higher than the commit counter), holds the record type of its bucket, sits under the
// key its content names, and the set of (bucket, key, version) matches
// the digest in the sealed state, so no record is missing, added or
// replaced by an older copy of itself. keep builds the State.
func (s *Store) scan(tx *bolt.Tx, keep bool) *Report {
	rep := &Report{Counter: s.st.Counter, Counts: map[string]int{}}
	st := &State{Sessions: map[string]*SessionState{}, Messages: map[uint64]*Message{}}
	var digest [32]byte
	var n uint64
	pubs := map[string]*Publisher{}
	for _, bucket := range scannedBuckets {
		b := tx.Bucket(bucket)
		if b == nil && bytes.Equal(bucket, bktPublisher) {
			continue // a store from before publishers were kept, opened read-only
		}
		if b == nil {
			if !isOptional(bucket) {
				rep.problem("bucket %s missing", bucket)
			}
			continue
		}
		b.ForEach(func(k, v []byte) error {
			n++
			ver, pt, err := s.keys.open(bucket, k, v)
			if err != nil {
				rep.problem("%s/%x: %v", bucket, k, err)
				return nil
			}
			xorInto(&digest, s.keys.element(bucket, k, ver))
			if ver > s.st.Counter {
				rep.problem("%s/%x: version %d, above the commit counter %d", bucket, k, ver, s.st.Counter)
			}
			r, err := decodeRecord(pt)
			if err != nil {
				rep.problem("%s/%x: %v", bucket, k, err)
				return nil
			}
			var want []byte
			var kind string
			var id uint64
			switch r := r.(type) {
			case *Session:
				want, kind = s.keys.sessionKey(r.ClientID), "sessions"
				st.session(r.ClientID).Session = r
			case *Message:
				want, kind, id = messageKey(r.ID), "messages", r.ID
				st.Messages[r.ID] = r
			case *Delivery:
				want, kind, id = s.keys.deliveryKey(r.ClientID, r.Seq), "deliveries", r.Seq
				ss := st.session(r.ClientID)
				ss.Deliveries = append(ss.Deliveries, r)
			case *inbound:
				want, kind = s.keys.inboundKey(r.ClientID, r.PacketID), "inbound_qos2"
				ss := st.session(r.ClientID)
				ss.Inbound = append(ss.Inbound, r.PacketID)
			case *Retained:
				want, kind = s.keys.retainedKey(r.Topic), "retained"
				st.Retained = append(st.Retained, r)
			case *Will:
				want, kind = s.keys.willKey(r.ClientID), "wills"
				st.Wills = append(st.Wills, r)
			case *Publisher:
				want, kind = s.keys.publisherKey(pt), "publishers"
				pubs[string(want)] = r
			case *TicketKeys:
				want, kind = s.keys.ticketKeysKey(r.Listener), "ticket_keys"
				if st.TicketKeys == nil {
					st.TicketKeys = map[string]*TicketKeys{}
				}
				st.TicketKeys[r.Listener] = r
			case *Ban:
				want, kind = s.keys.banKey(r.ID), "bans"
				st.Bans = append(st.Bans, r)
			default:
				rep.problem("%s/%x: unexpected record type", bucket, k)
				return nil
			}
			if !bytes.Equal(want, k) || !bytes.Equal(bucketOf(kind), bucket) {
				rep.problem("%s/%x: record of kind %s under the wrong key", bucket, k, kind)
			}
			if id > s.st.MaxID {
				rep.problem("%s/%x: ID %d above the highest issued %d", bucket, k, id, s.st.MaxID)
			}
			rep.Counts[kind]++
			return nil
		})
	}
	rep.Records = n
	if n != s.st.Records || digest != s.st.Digest {
		rep.problem("the records do not match the sealed digest (%d records, %d expected): records were removed, added or replaced by older copies", n, s.st.Records)
	}
	refs := map[uint64]int{}
	for id, ss := range st.Sessions {
		if ss.Session == nil {
			rep.problem("deliveries or QoS 2 identifiers for a session that is not stored")
		}
		slices.SortFunc(ss.Deliveries, func(a, b *Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
		slices.Sort(ss.Inbound)
		for _, d := range ss.Deliveries {
			refs[d.MsgID]++
			if st.Messages[d.MsgID] == nil {
				rep.problem("session %x: a delivery refers to the missing message %d", s.keys.sessionKey(id), d.MsgID)
			}
		}
	}
	for id := range st.Messages {
		if refs[id] == 0 {
			rep.problem("message %d is stored but no delivery refers to it", id)
		}
	}
	// Retained messages and wills share their publishers' records (one
	// *Publisher each, so a reader can convert each publisher once).
	prefs := map[string]int{}
	resolve := func(key []byte, what string) *Publisher {
		if key == nil {
			return nil
		}
		prefs[string(key)]++
		p := pubs[string(key)]
		if p == nil {
			rep.problem("%s refers to the missing publisher %x", what, key)
		}
		return p
	}
	for _, r := range st.Retained {
		r.Publisher = resolve(r.pubKey, "a retained message")
	}
	for _, w := range st.Wills {
		w.Publisher = resolve(w.pubKey, "a will")
	}
	for k := range pubs {
		if prefs[k] == 0 {
			rep.problem("publisher %x is stored but nothing refers to it", k)
		}
	}
	if keep {
		rep.state = st
	}
	return rep
}

func bucketOf(kind string) []byte {
	switch kind {
	case "sessions":
		return bktSession
	case "messages":
		return bktMessage
	case "deliveries":
		return bktDelivery
	case "inbound_qos2":
		return bktInbound
	case "retained":
		return bktRetained
	case "wills":
		return bktWill
	case "publishers":
		return bktPublisher
	case "ticket_keys":
		return bktTicketKeys
	case "bans":
		return bktBans
	}
	return nil
}
