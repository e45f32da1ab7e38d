package mosquittodb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSample(t *testing.T) {
	db, err := Parse(sample())
	if err != nil {
		t.Fatal(err)
	}
	m := db.Messages[1]
	if m == nil || m.Topic != "a/b" || string(m.Payload) != "hello" || m.QoS != 1 || !m.Retain || m.SourceID != "pub" || m.Props.ContentType != "tx" {
		t.Fatalf("message: %+v", m)
	}
	if len(db.Clients) != 1 || db.Clients[0].ID != "dev" || db.Clients[0].Username != "alice" || db.Clients[0].SessionExpiryInterval != 60 {
		t.Fatalf("clients: %+v", db.Clients)
	}
	if len(db.ClientMessages) != 1 || db.ClientMessages[0].State != StateQueued || db.ClientMessages[0].Props.SubscriptionIDs[0] != 9 {
		t.Fatalf("client messages: %+v", db.ClientMessages)
	}
	if s := db.Subscriptions; len(s) != 1 || s[0].Filter != "q/+" || !s[0].NoLocal || s[0].RetainAsPublished || s[0].Identifier != 9 {
		t.Fatalf("subscriptions: %+v", s)
	}
	if len(db.Retained) != 1 || db.Retained[0] != 1 || db.LastDBID != 3 || !db.Shutdown {
		t.Fatalf("db: %+v", db)
	}
}

// TestParseRejects feeds damaged and hostile files; each must be refused
// with a FormatError at the offset of the problem, without panicking and
// without allocating what a length declares.
func TestParseRejects(t *testing.T) {
	good := sample()
	cfgEnd := headerLen + 8 + cfgLen
	withMsg := func(body []byte) []byte { return newFile().cfg(1).chunk(chunkMsgStore, body).b }
	huge := bytes.Clone(good)
	binary.BigEndian.PutUint32(huge[cfgEnd+4:], 0xFFFFFFF0) // first message chunk length
	hugePayload := msgBody(1, "a", nil, 0, 0, nil)
	binary.BigEndian.PutUint32(hugePayload[16:], 0x7FFFFFFF)
	swapped := newFile()
	swapped.b = binary.BigEndian.AppendUint32(swapped.b, chunkCfg)
	swapped.b = binary.BigEndian.AppendUint32(swapped.b, cfgLen)
	swapped.b = binary.BigEndian.AppendUint64(swapped.b, 42)
	swapped.b = append(swapped.b, 0, 8, 0, 0, 0, 0, 0, 0)

	for _, tc := range []struct {
		name string
		b    []byte
		at   int64
		msg  string
	}{
		{"empty", nil, 0, "empty"},
		{"wrong magic", append([]byte("SQLite format 3\x00"), good[16:]...), 0, "no Mosquitto persistence header"},
		{"truncated header", good[:20], 20, "header is cut off"},
		{"bad CRC", append(append(bytes.Clone(good[:15]), 0, 0, 0, 1), good[19:]...), 15, "CRC"},
		{"version 5", append(append(bytes.Clone(good[:19]), 0, 0, 0, 5), good[23:]...), 19, "before 2.0"},
		{"version 99", append(append(bytes.Clone(good[:19]), 0, 0, 0, 99), good[23:]...), 19, "format version 99"},
		{"header only", good[:headerLen], headerLen, "no configuration chunk"},
		{"truncated chunk header", good[:cfgEnd+5], int64(cfgEnd), "chunk header is cut off"},
		{"truncated chunk", good[:len(good)-3], int64(len(good) - 16 + 4), "only 5 remain"},
		{"huge chunk length", huge, int64(cfgEnd + 4), "declares 4294967280 bytes"},
		{"chunk before configuration", newFile().chunk(chunkRetain, retainBody(1)).b, headerLen, "before the configuration"},
		{"two configurations", newFile().cfg(1).cfg(1).b, int64(cfgEnd), "second configuration"},
		{"short configuration", newFile().chunk(chunkCfg, make([]byte, 10)).b, headerLen + 8, "configuration chunk of 10 bytes"},
		{"byte-swapped IDs", swapped.b, headerLen + 8, "big-endian"},
		{"huge payload length", withMsg(hugePayload), int64(cfgEnd + 8 + 16), "exceeds MQTT's maximum"},
		{"payload longer than chunk", withMsg(msgBody(1, "a", []byte("xy"), 0, 0, nil)[:35+2]), int64(cfgEnd + 8 + 36), "payload needs 2 bytes"},
		{"bad QoS", withMsg(msgBody(1, "a", nil, 3, 0, nil)), int64(cfgEnd + 8 + 30), "QoS is 3"},
		{"bad retain", withMsg(msgBody(1, "a", nil, 0, 2, nil)), int64(cfgEnd + 8 + 31), "retain flag is 2"},
		{"wildcard topic", withMsg(msgBody(1, "a/#", nil, 0, 0, nil)), int64(cfgEnd + 8 + 35), "topic"},
		{"NUL in topic", withMsg(msgBody(1, "a\x00b", nil, 0, 0, nil)), int64(cfgEnd + 8 + 35), "not valid UTF-8"},
		{"properties length too long", withMsg(msgBody(1, "a", nil, 0, 0, []byte{9, 1, 1})), int64(cfgEnd + 8 + 36), "properties length 9"},
		{"properties length not minimal", withMsg(msgBody(1, "a", nil, 0, 0, []byte{0x82, 0x00, 1, 1})), int64(cfgEnd + 8 + 36), "not minimally encoded"},
		{"duplicate property", withMsg(msgBody(1, "a", nil, 0, 0, []byte{4, 1, 1, 1, 0})), int64(cfgEnd + 8 + 39), "appears twice"},
		{"not a PUBLISH property", withMsg(msgBody(1, "a", nil, 0, 0, []byte{2, 0x11, 0})), int64(cfgEnd + 8 + 37), "not a PUBLISH property"},
		{"subscription ID in a stored message", withMsg(msgBody(1, "a", nil, 0, 0, []byte{2, 0x0B, 1})), int64(cfgEnd + 8 + 37), "subscription identifier"},
		{"property cut off", withMsg(msgBody(1, "a", nil, 0, 0, []byte{3, 0x03, 0, 9})), int64(cfgEnd + 8 + 40), "content type needs 9 bytes"},
		{"duplicate message", newFile().cfg(2).chunk(chunkMsgStore, msgBody(1, "a", nil, 0, 0, nil)).chunk(chunkMsgStore, msgBody(1, "b", nil, 0, 0, nil)).b, int64(cfgEnd + 8 + 36 + 8), "stored twice"},
		{"left over bytes", newFile().cfg(1).chunk(chunkRetain, append(retainBody(1), 0)).b, int64(cfgEnd + 8), "retained chunk of 9 bytes"},
		{"bad subscription options", newFile().cfg(1).chunk(chunkSub, subBody("c", "t", 1, 0x30, 0)).b, int64(cfgEnd + 8 + 9), "subscription options"},
		{"bad filter", newFile().cfg(1).chunk(chunkSub, subBody("c", "a/#/b", 1, 0, 0)).b, int64(cfgEnd + 8 + 13), "filter"},
		{"empty client ID", newFile().cfg(1).chunk(chunkClient, clientBody("", "", 0)).b, int64(cfgEnd + 8 + 24), "empty client ID"},
		{"bad state", newFile().cfg(1).chunk(chunkClientMsg, clientMsgBody("c", 1, 1, 1, 12, 0, 1, nil)).b, int64(cfgEnd + 8 + 13), "state 12"},
		{"bad direction", newFile().cfg(1).chunk(chunkClientMsg, clientMsgBody("c", 1, 1, 1, 2, 0, 2, nil)).b, int64(cfgEnd + 8 + 15), "direction 2"},
		{"bad flags", newFile().cfg(1).chunk(chunkClientMsg, clientMsgBody("c", 1, 1, 1, 2, 0x02, 1, nil)).b, int64(cfgEnd + 8 + 14), "retain and DUP"},
		{"client ID cut off", newFile().cfg(1).chunk(chunkClientMsg, clientMsgBody("c", 1, 1, 1, 2, 0, 1, nil)[:16]).b, int64(cfgEnd + 8 + 16), "client ID needs 1 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.b)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFormat) {
				t.Fatalf("want a FormatError, got %v", err)
			}
			if fe.Offset != tc.at || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %q at byte %d, want %q at byte %d", err, fe.Offset, tc.msg, tc.at)
			}
		})
	}
}

// TestParseUnknownChunk: the format lets a reader skip chunk types it
// does not know (Mosquitto does); the reader does, with a note.
func TestParseUnknownChunk(t *testing.T) {
	b := newFile().cfg(1).chunk(77, []byte("future")).chunk(chunkRetain, retainBody(1)).b
	db, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(db.Notes) != 1 || !strings.Contains(db.Notes[0], "unknown type 77 (6 bytes)") || len(db.Retained) != 1 {
		t.Fatalf("notes %q, retained %v", db.Notes, db.Retained)
	}
}

// TestUsernameDefect: Mosquitto 2.0 writes a client without a username
// with the previous client's username field (its length byte-swapped,
// then restored, alternately). Such usernames are reported unknown, never
// taken as the client's.
func TestUsernameDefect(t *testing.T) {
	junk := append([]byte("alice\x00"), make([]byte, 0x0500-6)...) // bswap(5) bytes from alice's buffer
	b := newFile().cfg(1).
		chunk(chunkClient, clientBody("a", "alice", 60)).
		chunk(chunkClient, clientBody("b", string(junk), 60)).   // no username: swapped length
		chunk(chunkClient, clientBody("c", "alice", 60)).        // no username, or alice: unknown
		chunk(chunkClient, clientBody("d", "bob", 60)).          // a real username resets
		chunk(chunkClient, clientBody("e", "bob", 60)).          // same user right after: genuine
		chunk(chunkClient, clientBody("f", "\x00\x00\x00", 60)). // not swapped (3 → 0x300): invalid
		b
	_, err := Parse(b)
	if err == nil || !strings.Contains(err.Error(), "username is not valid UTF-8") {
		t.Fatalf("NUL-filled username accepted: %v", err)
	}
	db, err := Parse(b[:len(b)-(8+24+1+3)])
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "alice", "b": "?", "c": "?", "d": "bob", "e": "bob"}
	for _, c := range db.Clients {
		got := c.Username
		if c.UsernameUnknown {
			got = "?"
		}
		if got != want[c.ID] {
			t.Errorf("client %s: username %q, want %q", c.ID, got, want[c.ID])
		}
	}
	if len(db.Notes) != 2 {
		t.Errorf("notes: %q", db.Notes)
	}
}

func TestReadFileLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mosquitto.db")
	if err := os.WriteFile(path, sample(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(path, int64(len(sample())-1)); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadFile(path, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(t.TempDir(), 0); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
}
