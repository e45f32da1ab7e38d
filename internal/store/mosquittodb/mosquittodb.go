// Package mosquittodb reads the persistence file of Mosquitto 2.0
// (mosquitto.db, format version 6) so that its retained messages,
// persistent sessions, subscriptions and queued messages can be brought
// into Moat's store.
//
// The reader is strict and bounded: the file is size-checked before it is
// read, every declared length is checked against the bytes that remain
// before anything is allocated for it, every field is checked against the
// values Mosquitto writes, and every error names the byte offset of the
// problem. It never panics (FuzzParse). It reads the file only; it never
// writes one.
//
// The format, as Mosquitto 2.0 writes it: a 23-byte header (15 bytes of
// magic, a CRC field Mosquitto always leaves 0, the format version as a
// big-endian uint32), then chunks, each an 8-byte header (type and length,
// big-endian uint32) and a body. Inside the bodies, 16- and 32-bit
// integers are big-endian, but the 64-bit ones (message IDs, times) are in
// the byte order of the machine that wrote the file; this reader accepts
// little-endian files (x86, ARM) and refuses big-endian ones with a clear
// error. MQTT 5 properties follow the fixed fields, encoded as in a
// PUBLISH packet (variable-length total, then the properties).
package mosquittodb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unicode/utf8"

	"github.com/moatmq/moat/internal/packet"
)

// Version is the only file format version the reader accepts: the one
// Mosquitto 2.0 writes.
const Version = 6

// DefaultMaxSize is the largest file ReadFile reads unless told otherwise.
const DefaultMaxSize = 1 << 30

// magic opens every Mosquitto persistence file.
var magic = [15]byte{0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o', ' ', 'd', 'b'}

const headerLen = 15 + 4 + 4 // magic, CRC, version

// Chunk types.
const (
	chunkCfg       = 1
	chunkMsgStore  = 2
	chunkClientMsg = 3
	chunkRetain    = 4
	chunkSub       = 5
	chunkClient    = 6
)

// Fixed part of each chunk body (the C structs with their padding).
const (
	cfgLen       = 16
	msgStoreLen  = 32
	clientMsgLen = 16
	retainLen    = 8
	subLen       = 12
	clientLen    = 24
)

// maxPayload is the largest payload MQTT can carry, and the largest
// Mosquitto accepts when it reads its own file.
const maxPayload = 268435455

// ErrFormat is wrapped by every error about the content of a file.
var ErrFormat = errors.New("mosquittodb: not a valid Mosquitto 2.0 persistence file")

// FormatError is a problem at a byte offset of the file.
type FormatError struct {
	Offset int64
	Msg    string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("mosquittodb: byte %d: %s", e.Offset, e.Msg)
}

// Unwrap returns ErrFormat.
func (e *FormatError) Unwrap() error { return ErrFormat }

// DB is the content of a persistence file, in file order.
type DB struct {
	// LastDBID is the highest message store ID Mosquitto had handed out.
	LastDBID uint64
	// Shutdown is true when the file was written as Mosquitto stopped
	// (false: an autosave while it ran).
	Shutdown bool
	// Messages are the stored messages, by store ID.
	Messages map[uint64]*Message
	// Clients are the persistent sessions.
	Clients []*Client
	// ClientMessages are the messages queued for or in flight with
	// clients, in each client's order (in flight first, then queued).
	ClientMessages []*ClientMessage
	// Retained are the store IDs of the retained messages.
	Retained []uint64
	// Subscriptions of persistent sessions.
	Subscriptions []*Subscription
	// Notes describe what the reader skipped: chunks of unknown types,
	// which the format lets a reader pass over.
	Notes []string
}

// Message is a stored application message (a MSG_STORE chunk).
type Message struct {
	StoreID uint64
	// ExpiryTime is the wall-clock second (Unix time) the message
	// expires at, 0 for never.
	ExpiryTime     int64
	SourceMID      uint16
	SourceID       string // client ID of the publisher, "" if unknown
	SourceUsername string
	SourcePort     uint16 // listener port it arrived on, 0 if unknown
	Topic          string
	Payload        []byte
	QoS            byte
	Retain         bool
	Props          Properties
}

// Client is a persistent session (a CLIENT chunk).
type Client struct {
	ID       string
	Username string
	// SessionExpiryTime is the wall-clock second the offline session
	// expires at. Mosquitto sets it when a client disconnects and leaves it
	// unchanged while the client is connected, so it is 0 or stale for a
	// client that was connected when the file was written.
	SessionExpiryTime int64
	// SessionExpiryInterval in seconds; 0xFFFFFFFF: never (and every
	// MQTT 3.1.1 persistent session).
	SessionExpiryInterval uint32
	LastMID               uint16
	ListenerPort          uint16
	// UsernameUnknown is set when the username field is the one
	// Mosquitto 2.0's writer repeats from the previous client (a defect
	// of its writer); Username is then "".
	UsernameUnknown bool
}

// Direction of a client message.
type Direction byte

// Directions.
const (
	In  Direction = 0 // from the client to the broker (QoS 2 awaiting PUBREL)
	Out Direction = 1 // from the broker to the client
)

// State is Mosquitto's state of a client message.
type State byte

// States, as Mosquitto numbers them.
const (
	StatePublishQoS0    State = 1
	StatePublishQoS1    State = 2
	StateWaitForPuback  State = 3
	StatePublishQoS2    State = 4
	StateWaitForPubrec  State = 5
	StateResendPubrel   State = 6
	StateWaitForPubrel  State = 7
	StateResendPubcomp  State = 8
	StateWaitForPubcomp State = 9
	StateSendPubrec     State = 10
	StateQueued         State = 11
)

// ClientMessage is a message a client is owed or owes (a CLIENT_MSG
// chunk).
type ClientMessage struct {
	ClientID  string
	StoreID   uint64
	MID       uint16
	QoS       byte
	State     State
	Retain    bool
	Dup       bool
	Direction Direction
	// Props are the per-delivery properties (subscription identifiers).
	Props Properties
}

// Subscription is a persistent session's subscription (a SUB chunk).
// Mosquitto does not keep the Retain Handling option nor shared
// subscriptions.
type Subscription struct {
	ClientID          string
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	Identifier        uint32 // 0: none
}

// Properties are the MQTT 5 PUBLISH properties found in a chunk.
type Properties struct {
	PayloadFormat   *byte
	MessageExpiry   *uint32
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	SubscriptionIDs []uint32
	TopicAlias      uint16
	User            [][2]string
}

// ReadFile reads and parses the file at path, refusing files larger than
// maxSize bytes (DefaultMaxSize when maxSize <= 0).
func ReadFile(path string, maxSize int64) (*DB, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("mosquittodb: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("mosquittodb: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("mosquittodb: %s is not a regular file", path)
	}
	if fi.Size() > maxSize {
		return nil, fmt.Errorf("mosquittodb: %s is %d bytes, more than the limit of %d (raise it if the file is genuine)", path, fi.Size(), maxSize)
	}
	// Read at most one byte past the limit: the file may grow after Stat.
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("mosquittodb: reading %s: %w", path, err)
	}
	if int64(len(b)) > maxSize {
		return nil, fmt.Errorf("mosquittodb: %s grew past the limit of %d bytes while it was read", path, maxSize)
	}
	return Parse(b)
}

// Parse parses a whole persistence file. The returned DB refers to no
// part of b (strings and payloads are copies).
func Parse(b []byte) (*DB, error) {
	p := &parser{b: b}
	return p.parse()
}

type parser struct {
	b []byte
	// The username field of the last client chunk as Mosquitto's writer
	// leaves it for the next client without a username (see
	// Client.UsernameUnknown).
	staleUser []byte
	stale     bool // the last client chunk was itself written from stale state
}

func (p *parser) errf(at int, format string, args ...any) error {
	return &FormatError{Offset: int64(at), Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) parse() (*DB, error) {
	b := p.b
	if len(b) == 0 {
		return nil, p.errf(0, "the file is empty (Mosquitto had nothing to save, or the file was cut off)")
	}
	if len(b) < len(magic) || [15]byte(b[:15]) != magic {
		return nil, p.errf(0, "no Mosquitto persistence header (is this a mosquitto.db file?)")
	}
	if len(b) < headerLen {
		return nil, p.errf(len(b), "the header is cut off")
	}
	if crc := binary.BigEndian.Uint32(b[15:]); crc != 0 {
		return nil, p.errf(15, "CRC field is %#x; Mosquitto always writes 0 there (the file is damaged or not from Mosquitto)", crc)
	}
	if v := binary.BigEndian.Uint32(b[19:]); v != Version {
		hint := ""
		if v >= 2 && v < Version {
			hint = " (written by Mosquitto before 2.0: start Mosquitto 2.0 on it once, stop it, and import the file it writes)"
		}
		return nil, p.errf(19, "format version %d; only version %d (Mosquitto 2.0) is supported%s", v, Version, hint)
	}
	db := &DB{Messages: map[uint64]*Message{}}
	seenCfg := false
	for at := headerLen; at < len(b); {
		if len(b)-at < 8 {
			return nil, p.errf(at, "a chunk header is cut off (%d bytes left, 8 needed)", len(b)-at)
		}
		typ := binary.BigEndian.Uint32(b[at:])
		n := binary.BigEndian.Uint32(b[at+4:])
		body := at + 8
		if uint64(n) > uint64(len(b)-body) {
			return nil, p.errf(at+4, "chunk of type %d declares %d bytes, only %d remain (the file is cut off or damaged)", typ, n, len(b)-body)
		}
		c := &chunk{p: p, b: b[body : body+int(n)], base: body}
		if typ != chunkCfg && !seenCfg {
			return nil, p.errf(at, "chunk of type %d before the configuration chunk, which Mosquitto writes first", typ)
		}
		var err error
		switch typ {
		case chunkCfg:
			if seenCfg {
				return nil, p.errf(at, "a second configuration chunk")
			}
			seenCfg = true
			err = c.cfg(db)
		case chunkMsgStore:
			err = c.msgStore(db)
		case chunkClientMsg:
			err = c.clientMsg(db)
		case chunkRetain:
			err = c.retain(db)
		case chunkSub:
			err = c.sub(db)
		case chunkClient:
			err = c.client(db)
		default:
			db.Notes = append(db.Notes, fmt.Sprintf("byte %d: skipped a chunk of unknown type %d (%d bytes)", at, typ, n))
		}
		if err != nil {
			return nil, err
		}
		at = body + int(n)
	}
	if !seenCfg {
		return nil, p.errf(len(b), "no configuration chunk (the file is cut off after its header)")
	}
	return db, nil
}

// chunk decodes one chunk body; every read checks the bytes left.
type chunk struct {
	p    *parser
	b    []byte
	base int // file offset of b[0]
	i    int
	err  error
}

func (c *chunk) fail(at int, format string, args ...any) {
	if c.err == nil {
		c.err = c.p.errf(c.base+at, format, args...)
	}
}

func (c *chunk) need(n int, what string) bool {
	if c.err != nil {
		return false
	}
	if n < 0 || n > len(c.b)-c.i {
		c.fail(c.i, "%s needs %d bytes, the chunk has %d left", what, n, len(c.b)-c.i)
		return false
	}
	return true
}

func (c *chunk) u8(what string) byte {
	if !c.need(1, what) {
		return 0
	}
	c.i++
	return c.b[c.i-1]
}

func (c *chunk) u16(what string) uint16 {
	if !c.need(2, what) {
		return 0
	}
	c.i += 2
	return binary.BigEndian.Uint16(c.b[c.i-2:])
}

func (c *chunk) u32(what string) uint32 {
	if !c.need(4, what) {
		return 0
	}
	c.i += 4
	return binary.BigEndian.Uint32(c.b[c.i-4:])
}

// host64 reads a 64-bit field in the writer's byte order (little-endian).
func (c *chunk) host64(what string) uint64 {
	if !c.need(8, what) {
		return 0
	}
	c.i += 8
	return binary.LittleEndian.Uint64(c.b[c.i-8:])
}

func (c *chunk) skip(n int, what string) {
	if c.need(n, what) {
		c.i += n
	}
}

func (c *chunk) raw(n int, what string) []byte {
	if !c.need(n, what) {
		return nil
	}
	c.i += n
	return append([]byte(nil), c.b[c.i-n:c.i]...)
}

// str reads n bytes of text that must be UTF-8 without NUL (Mosquitto
// keeps these as C strings).
func (c *chunk) str(n int, what string) string {
	start := c.i
	if !c.need(n, what) {
		return ""
	}
	c.i += n
	s := string(c.b[start:c.i])
	if !packet.ValidString(s) {
		c.fail(start, "%s is not valid UTF-8 text", what)
	}
	return s
}

func (c *chunk) qos(what string) byte {
	at := c.i
	q := c.u8(what)
	if q > 2 {
		c.fail(at, "%s is %d (0, 1 or 2 expected)", what, q)
	}
	return q
}

func (c *chunk) boolean(what string) bool {
	at := c.i
	v := c.u8(what)
	if v > 1 {
		c.fail(at, "%s is %d (0 or 1 expected)", what, v)
	}
	return v == 1
}

// end checks that the chunk was consumed exactly.
func (c *chunk) end(what string) error {
	if c.err == nil && c.i != len(c.b) {
		c.fail(c.i, "%d bytes left over at the end of the %s chunk", len(c.b)-c.i, what)
	}
	return c.err
}

func (c *chunk) cfg(db *DB) error {
	if len(c.b) != cfgLen {
		c.fail(0, "configuration chunk of %d bytes (%d expected)", len(c.b), cfgLen)
		return c.err
	}
	db.LastDBID = c.host64("last message ID")
	if swapped := binary.BigEndian.Uint64(c.b[:8]); db.LastDBID > 1<<48 && swapped < 1<<32 {
		c.fail(0, "the last message ID %d looks byte-swapped: the file was written on a big-endian machine, which is not supported", db.LastDBID)
	}
	db.Shutdown = c.boolean("shutdown flag")
	at := c.i
	if size := c.u8("ID size"); size != 8 && c.err == nil {
		c.fail(at, "message IDs of %d bytes (Mosquitto 2.0 uses 8)", size)
	}
	c.skip(cfgLen-c.i, "padding")
	return c.end("configuration")
}

func (c *chunk) msgStore(db *DB) error {
	m := &Message{}
	m.StoreID = c.host64("message ID")
	at := c.i
	m.ExpiryTime = int64(c.host64("expiry time"))
	if m.ExpiryTime < 0 {
		c.fail(at, "negative expiry time %d", m.ExpiryTime)
	}
	at = c.i
	payloadLen := c.u32("payload length")
	if payloadLen > maxPayload {
		c.fail(at, "payload length %d exceeds MQTT's maximum of %d", payloadLen, maxPayload)
	}
	m.SourceMID = c.u16("source packet ID")
	idLen := c.u16("source client ID length")
	userLen := c.u16("source username length")
	topicLen := c.u16("topic length")
	m.SourcePort = c.u16("source port")
	m.QoS = c.qos("QoS")
	m.Retain = c.boolean("retain flag")
	m.SourceID = c.str(int(idLen), "source client ID")
	m.SourceUsername = c.str(int(userLen), "source username")
	at = c.i
	m.Topic = c.str(int(topicLen), "topic")
	if c.err == nil {
		if err := packet.ValidTopicName(m.Topic); err != nil {
			c.fail(at, "topic %q: %v", clip(m.Topic), err)
		}
	}
	if c.need(int(payloadLen), "payload") && payloadLen > 0 {
		m.Payload = c.raw(int(payloadLen), "payload")
	}
	c.props(&m.Props, false)
	if err := c.end("message"); err != nil {
		return err
	}
	if _, dup := db.Messages[m.StoreID]; dup {
		c.fail(0, "message ID %d stored twice", m.StoreID)
		return c.err
	}
	db.Messages[m.StoreID] = m
	return nil
}

func (c *chunk) clientMsg(db *DB) error {
	m := &ClientMessage{}
	m.StoreID = c.host64("message ID")
	m.MID = c.u16("packet ID")
	idLen := c.u16("client ID length")
	m.QoS = c.qos("QoS")
	at := c.i
	m.State = State(c.u8("state"))
	if c.err == nil && (m.State < StatePublishQoS0 || m.State > StateQueued) {
		c.fail(at, "message state %d is unknown", m.State)
	}
	at = c.i
	rd := c.u8("retain and DUP flags")
	if c.err == nil && rd&^0x11 != 0 {
		c.fail(at, "retain and DUP flags %#x (each 0 or 1 expected)", rd)
	}
	m.Retain, m.Dup = rd&0x10 != 0, rd&0x01 != 0
	at = c.i
	m.Direction = Direction(c.u8("direction"))
	if c.err == nil && m.Direction > Out {
		c.fail(at, "direction %d (0 in or 1 out expected)", m.Direction)
	}
	at = c.i
	m.ClientID = c.str(int(idLen), "client ID")
	if c.err == nil && m.ClientID == "" {
		c.fail(at, "empty client ID")
	}
	c.props(&m.Props, m.Direction == Out)
	if err := c.end("client message"); err != nil {
		return err
	}
	db.ClientMessages = append(db.ClientMessages, m)
	return nil
}

func (c *chunk) retain(db *DB) error {
	if len(c.b) != retainLen {
		c.fail(0, "retained chunk of %d bytes (%d expected)", len(c.b), retainLen)
		return c.err
	}
	db.Retained = append(db.Retained, c.host64("message ID"))
	return c.end("retained")
}

func (c *chunk) sub(db *DB) error {
	s := &Subscription{}
	at := c.i
	s.Identifier = c.u32("subscription identifier")
	if s.Identifier > maxPayload {
		c.fail(at, "subscription identifier %d exceeds %d", s.Identifier, maxPayload)
	}
	idLen := c.u16("client ID length")
	topicLen := c.u16("filter length")
	s.QoS = c.qos("QoS")
	at = c.i
	opts := c.u8("options")
	if c.err == nil && opts&^0x0c != 0 {
		c.fail(at, "subscription options %#x (only No Local and Retain As Published are kept)", opts)
	}
	s.NoLocal, s.RetainAsPublished = opts&0x04 != 0, opts&0x08 != 0
	c.skip(subLen-c.i, "padding")
	at = c.i
	s.ClientID = c.str(int(idLen), "client ID")
	if c.err == nil && s.ClientID == "" {
		c.fail(at, "empty client ID")
	}
	at = c.i
	s.Filter = c.str(int(topicLen), "filter")
	if c.err == nil {
		if err := packet.ValidTopicFilter(s.Filter); err != nil {
			c.fail(at, "filter %q: %v", clip(s.Filter), err)
		}
	}
	if err := c.end("subscription"); err != nil {
		return err
	}
	db.Subscriptions = append(db.Subscriptions, s)
	return nil
}

func (c *chunk) client(db *DB) error {
	cl := &Client{}
	cl.SessionExpiryTime = int64(c.host64("session expiry time"))
	cl.SessionExpiryInterval = c.u32("session expiry interval")
	cl.LastMID = c.u16("last packet ID")
	idLen := c.u16("client ID length")
	cl.ListenerPort = c.u16("listener port")
	userLen := c.u16("username length")
	c.skip(clientLen-c.i, "padding")
	at := c.i
	cl.ID = c.str(int(idLen), "client ID")
	if c.err == nil && cl.ID == "" {
		c.fail(at, "empty client ID")
	}
	at = c.i
	user := c.raw(int(userLen), "username")
	if c.err != nil {
		return c.err
	}
	c.p.checkUsername(cl, user)
	if !cl.UsernameUnknown {
		cl.Username = string(user)
		if !packet.ValidString(cl.Username) {
			c.fail(at, "username is not valid UTF-8 text")
		}
	}
	if err := c.end("client"); err != nil {
		return err
	}
	if cl.UsernameUnknown {
		db.Notes = append(db.Notes, fmt.Sprintf("byte %d: client %q: username unknown (Mosquitto 2.0 writes the previous client's username field into clients without one); ignored", c.base+at, clip(cl.ID)))
	}
	db.Clients = append(db.Clients, cl)
	return nil
}

// checkUsername recognises the username field Mosquitto 2.0's writer
// leaves behind. It reuses one client record for every client and sets
// the username only for clients that have one, converting the length to
// network byte order in place: a client without a username that follows
// one with username U (length L) is written with length bswap(L) and that
// many bytes read from U's buffer (U, then whatever memory follows), the
// next one with length L and U again, and so on. Such a field is not the
// client's username, and a later client whose username really is U cannot
// be told apart from the repetition, so both are reported unknown.
func (p *parser) checkUsername(cl *Client, user []byte) {
	n := len(user)
	if len(p.staleUser) > 0 {
		l := len(p.staleUser)
		swapped := int(uint16(l)>>8 | uint16(l)<<8)
		switch {
		case n == swapped && n != l && bytes.HasPrefix(user, p.staleUser[:min(n, l)]):
			// Written from the byte-swapped stale length.
			cl.UsernameUnknown, p.stale = true, true
			return
		case p.stale && n == l && bytes.Equal(user, p.staleUser):
			// Stale length swapped back, or a client with the same
			// username: indistinguishable.
			cl.UsernameUnknown = true
			return
		}
	}
	p.stale = false
	if n > 0 {
		p.staleUser = user
	}
}

// MQTT 5 property identifiers a PUBLISH may carry.
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x03
	propResponseTopic   = 0x08
	propCorrelationData = 0x09
	propSubscriptionID  = 0x0B
	propTopicAlias      = 0x23
	propUser            = 0x26
)

// varint reads an MQTT variable byte integer (at most 4 bytes, minimal).
func (c *chunk) varint(what string) uint32 {
	at := c.i
	var v uint32
	for n := 0; n < 4; n++ {
		b := c.u8(what)
		if c.err != nil {
			return 0
		}
		v |= uint32(b&0x7f) << (7 * n)
		if b&0x80 == 0 {
			if n > 0 && b == 0 {
				c.fail(at, "%s is not minimally encoded", what)
			}
			return v
		}
	}
	c.fail(at, "%s is longer than 4 bytes", what)
	return 0
}

// props reads the properties that fill the rest of the chunk, if any.
// Subscription identifiers are allowed only in an outgoing client message.
func (c *chunk) props(p *Properties, subIDs bool) {
	if c.err != nil || c.i == len(c.b) {
		return
	}
	at := c.i
	n := c.varint("properties length")
	if c.err != nil {
		return
	}
	if uint64(n) != uint64(len(c.b)-c.i) {
		c.fail(at, "properties length %d, but %d bytes remain in the chunk", n, len(c.b)-c.i)
		return
	}
	seen := map[byte]bool{}
	for c.err == nil && c.i < len(c.b) {
		at := c.i
		id := c.u8("property identifier")
		if c.err != nil {
			return
		}
		if seen[id] && id != propUser && id != propSubscriptionID {
			c.fail(at, "property %#x appears twice", id)
			return
		}
		seen[id] = true
		switch id {
		case propPayloadFormat:
			v := c.u8("payload format indicator")
			if v > 1 {
				c.fail(at, "payload format indicator %d (0 or 1 expected)", v)
			}
			p.PayloadFormat = &v
		case propMessageExpiry:
			v := c.u32("message expiry interval")
			p.MessageExpiry = &v
		case propContentType:
			p.ContentType = c.str(int(c.u16("content type length")), "content type")
		case propResponseTopic:
			p.ResponseTopic = c.str(int(c.u16("response topic length")), "response topic")
			if c.err == nil {
				if err := packet.ValidTopicName(p.ResponseTopic); err != nil {
					c.fail(at, "response topic %q: %v", clip(p.ResponseTopic), err)
				}
			}
		case propCorrelationData:
			p.CorrelationData = c.raw(int(c.u16("correlation data length")), "correlation data")
			if p.CorrelationData == nil && c.err == nil {
				p.CorrelationData = []byte{}
			}
		case propSubscriptionID:
			v := c.varint("subscription identifier")
			if c.err == nil && (!subIDs || v == 0) {
				c.fail(at, "subscription identifier %d where none can be", v)
			}
			p.SubscriptionIDs = append(p.SubscriptionIDs, v)
		case propTopicAlias:
			p.TopicAlias = c.u16("topic alias")
		case propUser:
			k := c.str(int(c.u16("user property name length")), "user property name")
			v := c.str(int(c.u16("user property value length")), "user property value")
			p.User = append(p.User, [2]string{k, v})
		default:
			c.fail(at, "property %#x is not a PUBLISH property", id)
		}
	}
}

// clip shortens text from the file for an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	for i := max; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i] + "…"
		}
	}
	return ""
}
