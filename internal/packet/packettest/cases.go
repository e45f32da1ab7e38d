package packettest

import (
	"io"

	"github.com/moatmq/moat/internal/packet"
)

const (
	v31  = packet.V31
	v311 = packet.V311
	v5   = packet.V5
)

var (
	errMal   = packet.ErrMalformed
	errProto = packet.ErrProtocol
	mal      = packet.MalformedPacket
	proto    = packet.ProtocolError
)

// Fixed header first bytes.
const (
	hConnect     = 0x10
	hConnack     = 0x20
	hPublish     = 0x30
	hPuback      = 0x40
	hPubrec      = 0x50
	hPubrel      = 0x62
	hPubcomp     = 0x70
	hSubscribe   = 0x82
	hSuback      = 0x90
	hUnsubscribe = 0xA2
	hUnsuback    = 0xB0
	hPingreq     = 0xC0
	hPingresp    = 0xD0
	hDisconnect  = 0xE0
	hAuth        = 0xF0
)

// valid builds a case for a valid packet.
func valid(name string, v packet.Version, raw []byte, p packet.Packet) Case {
	return Case{Name: name, Version: v, Raw: raw, Packet: p}
}

// nonCanon builds a case for a valid packet that Append writes differently.
func nonCanon(name string, v packet.Version, raw []byte, p packet.Packet) Case {
	return Case{Name: name, Version: v, Raw: raw, Packet: p, NonCanonical: true}
}

// bad builds a case for an invalid packet.
func bad(name string, v packet.Version, raw []byte, err error, code packet.ReasonCode) Case {
	return Case{Name: name, Version: v, Raw: raw, Err: err, Code: code}
}

// badConnect builds a case for an invalid CONNECT decoded up to its level.
// The decoder returns only ProtocolName and Version of a failed CONNECT.
func badConnect(name string, raw []byte, partial *packet.Connect, err error, code packet.ReasonCode) Case {
	p := &packet.Connect{ProtocolName: partial.ProtocolName, Version: partial.Version}
	return Case{Name: name, Version: v311, Raw: raw, Packet: p, Err: err, Code: code}
}

func connectHead(v packet.Version) []byte {
	if v == v31 {
		return Cat(S("MQIsdp"), 3)
	}
	return Cat(S("MQTT"), byte(v))
}

func partial(v packet.Version) *packet.Connect {
	name := "MQTT"
	if v == v31 {
		name = "MQIsdp"
	}
	return &packet.Connect{ProtocolName: name, Version: v}
}

func with(c *packet.Connect, f func(c *packet.Connect)) *packet.Connect { f(c); return c }

// Cases is the shared table. Tests must not modify it.
var Cases = buildCases()

func buildCases() []Case {
	var cs []Case
	add := func(c ...Case) { cs = append(cs, c...) }

	// ---- Fixed header and variable byte integers ----
	add(
		bad("MQTT-2.1.2 reserved packet type 0", v311, Pkt(0x00), errMal, mal),
		bad("MQTT-2.1.3-1 CONNECT flags not 0", v311, Pkt(0x11, connectHead(v311), 0x02, U16(60), S("c")), errMal, mal),
		bad("MQTT-2.1.3-1 PUBREL flags 0", v311, Pkt(0x60, U16(1)), errMal, mal),
		bad("MQTT-2.1.3-1 PUBREL flags 0xA in 3.1.1", v311, Pkt(0x6A, U16(1)), errMal, mal),
		bad("MQTT-2.1.3-1 SUBSCRIBE flags 0", v311, Pkt(0x80, U16(1), S("a"), 0), errMal, mal),
		bad("MQTT-2.1.3-1 UNSUBSCRIBE flags 3", v311, Pkt(0xA3, U16(1), S("a")), errMal, mal),
		bad("MQTT-2.1.3-1 PINGREQ flags 1", v311, Pkt(0xC1), errMal, mal),
		bad("MQTT-2.1.3-1 DISCONNECT flags 8", v5, Pkt(0xE8), errMal, mal),
		bad("MQTT-2.1.3-1 PUBACK flags 2", v5, Pkt(0x42, U16(1)), errMal, mal),
		bad("MQTT-3.3.1-4 PUBLISH QoS 3", v311, Pkt(0x36, S("a"), U16(1)), errMal, mal),
		bad("MQTT-3.3.1-2 PUBLISH DUP on QoS 0", v311, Pkt(0x38, S("a")), errProto, proto),
		bad("MQTT-2.1.2 AUTH in 3.1.1", v311, Pkt(0xF0), errMal, mal),
		bad("MQTT-2.1.2 AUTH in 3.1", v31, Pkt(0xF0), errMal, mal),
		bad("MQTT-1.5.5 remaining length of 5 bytes", v311, Cat(0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01), errMal, mal),
		bad("MQTT-1.5.5-1 remaining length not minimal (0x80 0x00)", v311, Cat(0xC0, 0x80, 0x00), errMal, mal),
		bad("MQTT-1.5.5-1 remaining length not minimal (0x85 0x80 0x00)", v311, Cat(0x30, 0x85, 0x80, 0x00), errMal, mal),
		bad("truncated remaining length", v311, Cat(0x30, 0x80), io.ErrUnexpectedEOF, 0),
		bad("truncated body", v311, Cat(0x30, 10, 0, 1, 'a'), io.ErrUnexpectedEOF, 0),
		Case{Name: "MQTT 5.0 §3.1.2.11.4 packet larger than the maximum", Version: v311,
			Raw: Pkt(hPublish, S("a/b"), Repeat('x', 100)), MaxSize: 50,
			Err: packet.ErrPacketTooLarge, Code: packet.PacketTooLarge},
		Case{Name: "MQTT 5.0 §3.1.2.11.4 declared length over the maximum, body absent", Version: v5,
			Raw: Cat(0x30, 0xFF, 0xFF, 0xFF, 0x7F), MaxSize: 1 << 20,
			Err: packet.ErrPacketTooLarge, Code: packet.PacketTooLarge},
		Case{Name: "packet exactly at the maximum", Version: v311,
			Raw: Pkt(hPublish, S("a"), Repeat('x', 7)), MaxSize: 12,
			Packet: &packet.Publish{Topic: "a", Payload: Repeat('x', 7)}},
	)

	// ---- CONNECT ----
	add(
		valid("CONNECT 3.1 MQIsdp", v311, Pkt(hConnect, connectHead(v31), 0x02, U16(30), S("client-31")),
			with(partial(v31), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 30; c.ClientID = "client-31" })),
		valid("CONNECT 3.1 with will, user name and password", v31,
			Pkt(hConnect, connectHead(v31), 0xEE, U16(10), S("c"), S("will/t"), S("bye"), S("user"), S("pass")),
			with(partial(v31), func(c *packet.Connect) {
				c.CleanStart, c.KeepAlive, c.ClientID = true, 10, "c"
				c.Will = &packet.Will{Topic: "will/t", Payload: []byte("bye"), QoS: 1, Retain: true}
				c.UsernameFlag, c.Username, c.PasswordFlag, c.Password = true, "user", true, []byte("pass")
			})),
		valid("CONNECT 3.1.1 minimal", v311, Pkt(hConnect, connectHead(v311), 0x02, U16(60), S("dev1")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 60; c.ClientID = "dev1" })),
		valid("MQTT-3.1.3-6 CONNECT 3.1.1 empty client id", v311, Pkt(hConnect, connectHead(v311), 0x02, U16(0), S("")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true })),
		valid("CONNECT 3.1.1 will QoS 2, user name, password", v311,
			Pkt(hConnect, connectHead(v311), 0xD4, U16(5), S("id"), S("w"), S("gone"), S("u"), Cat(U16(2), 0xFF, 0x00)),
			with(partial(v311), func(c *packet.Connect) {
				c.KeepAlive, c.ClientID = 5, "id"
				c.Will = &packet.Will{Topic: "w", Payload: []byte("gone"), QoS: 2}
				c.UsernameFlag, c.Username, c.PasswordFlag, c.Password = true, "u", true, []byte{0xFF, 0x00}
			})),
		valid("CONNECT 3.1.1 user name only", v311, Pkt(hConnect, connectHead(v311), 0x80, U16(5), S("id"), S("u")),
			with(partial(v311), func(c *packet.Connect) {
				c.KeepAlive, c.ClientID, c.UsernameFlag, c.Username = 5, "id", true, "u"
			})),
		valid("CONNECT 5.0 minimal", v5, Pkt(hConnect, connectHead(v5), 0x02, U16(60), Props(), S("c5")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 60; c.ClientID = "c5" })),
		valid("CONNECT 5.0 all connect properties", v5,
			Pkt(hConnect, connectHead(v5), 0xC2, U16(60),
				Props(0x11, U32(3600), 0x15, S("SCRAM"), 0x16, S("\x01\x02"), 0x17, 0, 0x19, 1,
					0x21, U16(10), 0x22, U16(5), 0x26, S("k"), S("v"), 0x26, S("k"), S("w"), 0x27, U32(1<<20)),
				S("c5"), S("alice"), S("secret")),
			with(partial(v5), func(c *packet.Connect) {
				c.CleanStart, c.KeepAlive, c.ClientID = true, 60, "c5"
				c.UsernameFlag, c.Username, c.PasswordFlag, c.Password = true, "alice", true, []byte("secret")
				c.Properties = NewP().Set(packet.PropSessionExpiry, uint32(3600)).Set(packet.PropAuthMethod, "SCRAM").
					Set(packet.PropAuthData, []byte{1, 2}).Set(packet.PropRequestProblemInfo, byte(0)).
					Set(packet.PropRequestResponseInfo, byte(1)).Set(packet.PropReceiveMaximum, uint16(10)).
					Set(packet.PropTopicAliasMaximum, uint16(5)).Set(packet.PropUser, [2]string{"k", "v"}).
					Set(packet.PropUser, [2]string{"k", "w"}).Set(packet.PropMaximumPacketSize, uint32(1<<20)).Build()
			})),
		nonCanon("CONNECT 5.0 properties out of order", v5,
			Pkt(hConnect, connectHead(v5), 0x00, U16(0), Props(0x21, U16(10), 0x11, U32(1)), S("x")),
			with(partial(v5), func(c *packet.Connect) {
				c.ClientID = "x"
				c.Properties = NewP().Set(packet.PropReceiveMaximum, uint16(10)).Set(packet.PropSessionExpiry, uint32(1)).Build()
			})),
		valid("CONNECT 5.0 will with all will properties", v5,
			Pkt(hConnect, connectHead(v5), 0x2C, U16(0), Props(), S("c"),
				Props(0x01, 1, 0x02, U32(60), 0x03, S("text/plain"), 0x08, S("resp/t"), 0x09, S("cd"), 0x18, U32(5), 0x26, S("a"), S("b")),
				S("will/t"), S("bye")),
			with(partial(v5), func(c *packet.Connect) {
				c.ClientID = "c"
				c.Will = &packet.Will{Topic: "will/t", Payload: []byte("bye"), QoS: 1, Retain: true,
					Properties: NewP().Set(packet.PropPayloadFormat, byte(1)).Set(packet.PropMessageExpiry, uint32(60)).
						Set(packet.PropContentType, "text/plain").Set(packet.PropResponseTopic, "resp/t").
						Set(packet.PropCorrelationData, []byte("cd")).Set(packet.PropWillDelay, uint32(5)).
						Set(packet.PropUser, [2]string{"a", "b"}).Build()}
			})),
		valid("MQTT-3.1.2-22 5.0 allows a password without a user name", v5,
			Pkt(hConnect, connectHead(v5), 0x42, U16(0), Props(), S("c"), S("pw")),
			with(partial(v5), func(c *packet.Connect) {
				c.CleanStart, c.ClientID, c.PasswordFlag, c.Password = true, "c", true, []byte("pw")
			})),
		valid("CONNECT 5.0 empty will payload", v5,
			Pkt(hConnect, connectHead(v5), 0x04, U16(0), Props(), S("c"), Props(), S("t"), S("")),
			with(partial(v5), func(c *packet.Connect) {
				c.ClientID = "c"
				c.Will = &packet.Will{Topic: "t"}
			})),
	)
	unsupported := func(name string, raw []byte, pname string, level packet.Version) Case {
		return badConnect(name, raw, &packet.Connect{ProtocolName: pname, Version: level},
			packet.ErrUnsupportedVersion, packet.UnsupportedProtocolVersion)
	}
	add(
		unsupported("MQTT-3.1.2-1 protocol name MQTX", Pkt(hConnect, S("MQTX"), 4, 0x02, U16(0), S("c")), "MQTX", 4),
		unsupported("MQTT-3.1.2-2 protocol level 6", Pkt(hConnect, S("MQTT"), 6, 0x02, U16(0), S("c")), "MQTT", 6),
		unsupported("MQTT-3.1.2-2 MQTT with level 3", Pkt(hConnect, S("MQTT"), 3, 0x02, U16(0), S("c")), "MQTT", 3),
		unsupported("MQTT-3.1.2-2 MQIsdp with level 4", Pkt(hConnect, S("MQIsdp"), 4, 0x02, U16(0), S("c")), "MQIsdp", 4),
		unsupported("MQTT-3.1.2-1 protocol name not UTF-8", Pkt(hConnect, S("\xff\xfe"), 5), "", 5),
		bad("CONNECT truncated before the level", v311, Pkt(hConnect, S("MQTT")), errMal, mal),
		bad("CONNECT empty body", v311, Pkt(hConnect), errMal, mal),
		badConnect("MQTT-3.1.2-3 reserved connect flag", Pkt(hConnect, connectHead(v311), 0x03, U16(0), S("c")), partial(v311), errMal, mal),
		badConnect("MQTT-3.1.2-3 reserved connect flag 5.0", Pkt(hConnect, connectHead(v5), 0x01, U16(0), Props(), S("c")), partial(v5), errMal, mal),
		badConnect("MQTT-3.1.2-13 3.1.1 will QoS without will flag", Pkt(hConnect, connectHead(v311), 0x0A, U16(0), S("c")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT-3.1.2-15 3.1.1 will retain without will flag", Pkt(hConnect, connectHead(v311), 0x20, U16(0), S("c")), partial(v311), errMal, mal),
		badConnect("MQTT-3.1.2-14 3.1.1 will QoS 3", Pkt(hConnect, connectHead(v311), 0x1C, U16(0), S("c"), S("t"), S("p")), partial(v311), errMal, mal),
		badConnect("MQTT-3.1.2-11 5.0 will QoS without will flag", Pkt(hConnect, connectHead(v5), 0x10, U16(0), Props(), S("c")), partial(v5), errMal, mal),
		badConnect("MQTT-3.1.2-22 3.1.1 password without user name", Pkt(hConnect, connectHead(v311), 0x40, U16(0), S("c"), S("p")),
			partial(v311), errProto, proto),
		badConnect("MQTT-3.1.2-22 3.1 password without user name", Pkt(hConnect, connectHead(v31), 0x40, U16(0), S("c"), S("p")),
			partial(v31), errProto, proto),
		badConnect("MQTT-1.5.4-2 client id with U+0000", Pkt(hConnect, connectHead(v311), 0x02, U16(7), S("a\x00b")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 7 }), errMal, mal),
		badConnect("MQTT-1.5.4-1 client id with a surrogate", Pkt(hConnect, connectHead(v311), 0x02, U16(7), S("a\xed\xa0\x80")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 7 }), errMal, mal),
		badConnect("MQTT-1.5.4-1 client id not UTF-8", Pkt(hConnect, connectHead(v311), 0x02, U16(7), S("\xc3\x28")),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true; c.KeepAlive = 7 }), errMal, mal),
		badConnect("MQTT-3.1.3-11 will topic with wildcard", Pkt(hConnect, connectHead(v311), 0x04, U16(0), S("c"), S("a/#"), S("p")),
			with(partial(v311), func(c *packet.Connect) { c.ClientID = "c" }), errProto, proto),
		badConnect("MQTT-3.1.3-11 empty will topic", Pkt(hConnect, connectHead(v5), 0x04, U16(0), Props(), S("c"), Props(), S(""), S("p")),
			with(partial(v5), func(c *packet.Connect) { c.ClientID = "c" }), errProto, proto),
		badConnect("CONNECT bytes after the password", Pkt(hConnect, connectHead(v311), 0xC0, U16(0), S("c"), S("u"), S("p"), 0),
			with(partial(v311), func(c *packet.Connect) {
				c.ClientID, c.UsernameFlag, c.Username, c.PasswordFlag, c.Password = "c", true, "u", true, []byte("p")
			}), errMal, mal),
		badConnect("CONNECT user name flag without user name", Pkt(hConnect, connectHead(v311), 0x80, U16(0), S("c")),
			with(partial(v311), func(c *packet.Connect) { c.ClientID, c.UsernameFlag = "c", true }), errMal, mal),
		badConnect("CONNECT client id length beyond the packet", Pkt(hConnect, connectHead(v311), 0x02, U16(0), U16(50), "abc"),
			with(partial(v311), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2.2 unknown property 0x05", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x05, 1), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2.2 property identifier as 2-byte integer", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x91, 0x00, U32(1)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2.2 Topic Alias not allowed in CONNECT", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x23, U16(1)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2.2 Will Delay not allowed in CONNECT properties", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x18, U32(1)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2.2 Session Expiry not allowed in will properties",
			Pkt(hConnect, connectHead(v5), 0x04, U16(0), Props(), S("c"), Props(0x11, U32(1)), S("t"), S("p")),
			with(partial(v5), func(c *packet.Connect) { c.ClientID = "c" }), errMal, mal),
		badConnect("MQTT 5.0 §3.1.2.11.2 Session Expiry twice", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x11, U32(1), 0x11, U32(2)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §3.1.2.11.3 Receive Maximum 0", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x21, U16(0)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §3.1.2.11.4 Maximum Packet Size 0", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x27, U32(0)), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §3.1.2.11.7 Request Problem Information 2", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x17, 2), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §3.1.2.11.6 Request Response Information 2", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x19, 2), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §3.1.2.11.10 Authentication Data without Method", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x16, S("x")), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errProto, proto),
		badConnect("MQTT 5.0 §2.2.2 property length beyond the packet", Pkt(hConnect, connectHead(v5), 0x02, U16(0), 0x20, 0x11, U32(1)),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT 5.0 §2.2.2 property value beyond the property length", Pkt(hConnect, connectHead(v5), 0x02, U16(0), 0x03, 0x11, U32(1), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT-1.5.7-1 user property name not UTF-8", Pkt(hConnect, connectHead(v5), 0x02, U16(0), Props(0x26, S("\xff"), S("v")), S("c")),
			with(partial(v5), func(c *packet.Connect) { c.CleanStart = true }), errMal, mal),
		badConnect("MQTT-3.3.2-14 will Response Topic with wildcard",
			Pkt(hConnect, connectHead(v5), 0x04, U16(0), Props(), S("c"), Props(0x08, S("r/+")), S("t"), S("p")),
			with(partial(v5), func(c *packet.Connect) { c.ClientID = "c" }), errProto, proto),
		badConnect("MQTT 5.0 will Payload Format Indicator 2",
			Pkt(hConnect, connectHead(v5), 0x04, U16(0), Props(), S("c"), Props(0x01, 2), S("t"), S("p")),
			with(partial(v5), func(c *packet.Connect) { c.ClientID = "c" }), errProto, proto),
	)

	// ---- CONNACK ----
	add(
		valid("CONNACK 3.1.1 accepted", v311, Pkt(hConnack, 0, 0), &packet.Connack{}),
		valid("CONNACK 3.1.1 session present", v311, Pkt(hConnack, 1, 0), &packet.Connack{SessionPresent: true}),
		valid("CONNACK 3.1 not authorized", v31, Pkt(hConnack, 0, 5), &packet.Connack{ReasonCode: packet.V3NotAuthorized}),
		nonCanon("CONNACK 3.1 unused first byte ignored", v31, Pkt(hConnack, 0xFF, 0), &packet.Connack{}),
		valid("CONNACK 3.1.1 unacceptable protocol version", v311, Pkt(hConnack, 0, 1), &packet.Connack{ReasonCode: packet.V3UnacceptableProtocolVersion}),
		valid("CONNACK 5.0 success without properties", v5, Pkt(hConnack, 0, 0, Props()), &packet.Connack{}),
		valid("CONNACK 5.0 all properties", v5,
			Pkt(hConnack, 1, 0, Props(0x11, U32(0xFFFFFFFF), 0x12, S("auto-1"), 0x13, U16(30), 0x15, S("m"), 0x16, S("d"),
				0x1A, S("info"), 0x1C, S("other"), 0x1F, S("ok"), 0x21, U16(100), 0x22, U16(10), 0x24, 1, 0x25, 0,
				0x26, S("x"), S("y"), 0x27, U32(65536), 0x28, 0, 0x29, 0, 0x2A, 1)),
			&packet.Connack{SessionPresent: true, Properties: NewP().Set(packet.PropSessionExpiry, uint32(0xFFFFFFFF)).
				Set(packet.PropAssignedClientID, "auto-1").Set(packet.PropServerKeepAlive, uint16(30)).
				Set(packet.PropAuthMethod, "m").Set(packet.PropAuthData, []byte("d")).Set(packet.PropResponseInfo, "info").
				Set(packet.PropServerReference, "other").Set(packet.PropReasonString, "ok").
				Set(packet.PropReceiveMaximum, uint16(100)).Set(packet.PropTopicAliasMaximum, uint16(10)).
				Set(packet.PropMaximumQoS, byte(1)).Set(packet.PropRetainAvailable, byte(0)).
				Set(packet.PropUser, [2]string{"x", "y"}).Set(packet.PropMaximumPacketSize, uint32(65536)).
				Set(packet.PropWildcardSubAvailable, byte(0)).Set(packet.PropSubscriptionIDAvail, byte(0)).
				Set(packet.PropSharedSubAvailable, byte(1)).Build()}),
		valid("CONNACK 5.0 not authorized", v5, Pkt(hConnack, 0, 0x87, Props()), &packet.Connack{ReasonCode: packet.NotAuthorized}),
		bad("MQTT-3.2.2-1 CONNACK reserved flags", v311, Pkt(hConnack, 2, 0), errMal, mal),
		bad("MQTT-3.2.2-1 CONNACK 5.0 reserved flags", v5, Pkt(hConnack, 0x80, 0, Props()), errMal, mal),
		bad("CONNACK 3.1.1 return code 6", v311, Pkt(hConnack, 0, 6), errMal, mal),
		bad("CONNACK 3.1.1 trailing byte", v311, Pkt(hConnack, 0, 0, 0), errMal, mal),
		bad("CONNACK 3.1.1 too short", v311, Pkt(hConnack, 0), errMal, mal),
		bad("MQTT-3.2.2-6 session present with an error code", v5, Pkt(hConnack, 1, 0x80, Props()), errProto, proto),
		bad("MQTT-3.2.2-4 3.1.1 session present with an error code", v311, Pkt(hConnack, 1, 2), errProto, proto),
		bad("MQTT 5.0 §3.2.2.2 CONNACK reason code 0x10", v5, Pkt(hConnack, 0, 0x10, Props()), errMal, mal),
		bad("MQTT 5.0 §3.2.2.3 CONNACK without property length", v5, Pkt(hConnack, 0, 0), errMal, mal),
		bad("MQTT 5.0 §3.2.2.3.4 Maximum QoS 2", v5, Pkt(hConnack, 0, 0, Props(0x24, 2)), errProto, proto),
		bad("MQTT 5.0 §3.2.2.3.5 Retain Available 2", v5, Pkt(hConnack, 0, 0, Props(0x25, 2)), errProto, proto),
		bad("MQTT 5.0 §2.2.2.2 Will Delay not allowed in CONNACK", v5, Pkt(hConnack, 0, 0, Props(0x18, U32(1))), errMal, mal),
		bad("MQTT 5.0 §3.2.2.3.11 Shared Subscription Available twice", v5, Pkt(hConnack, 0, 0, Props(0x2A, 1, 0x2A, 1)), errProto, proto),
	)

	// ---- PUBLISH ----
	add(
		valid("PUBLISH 3.1.1 QoS 0", v311, Pkt(hPublish, S("a/b"), "hello"), &packet.Publish{Topic: "a/b", Payload: []byte("hello")}),
		valid("PUBLISH 3.1 QoS 1 retain", v31, Pkt(0x33, S("a"), U16(7), "x"), &packet.Publish{QoS: 1, Retain: true, Topic: "a", PacketID: 7, Payload: []byte("x")}),
		valid("PUBLISH 3.1.1 QoS 2 DUP", v311, Pkt(0x3C, S("a/b/c"), U16(0xFFFF), "p"), &packet.Publish{Dup: true, QoS: 2, Topic: "a/b/c", PacketID: 0xFFFF, Payload: []byte("p")}),
		valid("MQTT-3.3.3 PUBLISH empty payload", v311, Pkt(0x31, S("t")), &packet.Publish{Retain: true, Topic: "t"}),
		valid("PUBLISH two-byte remaining length", v311, Pkt(hPublish, S("t"), Repeat('z', 200)), &packet.Publish{Topic: "t", Payload: Repeat('z', 200)}),
		valid("PUBLISH topic with spaces and UTF-8", v311, Pkt(hPublish, S("a b/ü/€"), "x"), &packet.Publish{Topic: "a b/ü/€", Payload: []byte("x")}),
		valid("PUBLISH $SYS topic", v311, Pkt(hPublish, S("$SYS/x")), &packet.Publish{Topic: "$SYS/x"}),
		valid("PUBLISH 5.0 QoS 0 no properties", v5, Pkt(hPublish, S("a"), Props(), "x"), &packet.Publish{Topic: "a", Payload: []byte("x")}),
		valid("PUBLISH 5.0 all properties", v5,
			Pkt(0x32, S("a/b"), U16(9), Props(0x01, 1, 0x02, U32(30), 0x03, S("application/json"), 0x08, S("reply/x"),
				0x09, S("corr"), 0x0B, 5, 0x0B, 0x80, 0x01, 0x23, U16(3), 0x26, S("u"), S("1"), 0x26, S("u"), S("2")), `{"t":1}`),
			&packet.Publish{QoS: 1, Topic: "a/b", PacketID: 9, Payload: []byte(`{"t":1}`),
				Properties: NewP().Set(packet.PropPayloadFormat, byte(1)).Set(packet.PropMessageExpiry, uint32(30)).
					Set(packet.PropContentType, "application/json").Set(packet.PropResponseTopic, "reply/x").
					Set(packet.PropCorrelationData, []byte("corr")).Set(packet.PropSubscriptionID, uint32(5)).
					Set(packet.PropSubscriptionID, uint32(128)).Set(packet.PropTopicAlias, uint16(3)).
					Set(packet.PropUser, [2]string{"u", "1"}).Set(packet.PropUser, [2]string{"u", "2"}).Build()}),
		valid("MQTT 5.0 §3.3.2.3.4 empty topic with Topic Alias", v5, Pkt(hPublish, S(""), Props(0x23, U16(1)), "x"),
			&packet.Publish{Payload: []byte("x"), Properties: NewP().Set(packet.PropTopicAlias, uint16(1)).Build()}),
		valid("PUBLISH 5.0 payload format 1 with non-UTF-8 payload is left to the receiver", v5,
			Pkt(hPublish, S("a"), Props(0x01, 1), 0xFF),
			&packet.Publish{Topic: "a", Payload: []byte{0xFF}, Properties: NewP().Set(packet.PropPayloadFormat, byte(1)).Build()}),
		bad("MQTT-3.3.2-2 topic name with +", v311, Pkt(hPublish, S("a/+/b")), errProto, proto),
		bad("MQTT-3.3.2-2 topic name with #", v5, Pkt(hPublish, S("#"), Props()), errProto, proto),
		bad("MQTT-4.7.3-1 empty topic name 3.1.1", v311, Pkt(hPublish, S(""), "x"), errProto, proto),
		bad("MQTT 5.0 §3.3.2.1 empty topic name without Topic Alias", v5, Pkt(hPublish, S(""), Props(), "x"), errProto, proto),
		bad("MQTT-1.5.4-2 topic name with U+0000", v311, Pkt(hPublish, S("a\x00")), errMal, mal),
		bad("MQTT-1.5.4-1 topic name with surrogate", v311, Pkt(hPublish, S("\xed\xbf\xbf")), errMal, mal),
		bad("MQTT-2.2.1-3 QoS 1 packet identifier 0", v311, Pkt(0x32, S("a"), U16(0)), errProto, proto),
		bad("PUBLISH topic length beyond the packet", v311, Pkt(hPublish, U16(10), "ab"), errMal, mal),
		bad("PUBLISH QoS 1 without packet identifier", v311, Pkt(0x32, S("a")), errMal, mal),
		bad("PUBLISH empty body", v311, Pkt(hPublish), errMal, mal),
		bad("MQTT-3.3.2-8 Topic Alias 0", v5, Pkt(hPublish, S("a"), Props(0x23, U16(0))), errProto, proto),
		bad("MQTT 5.0 §3.3.2.3.2 Payload Format Indicator 2", v5, Pkt(hPublish, S("a"), Props(0x01, 2)), errProto, proto),
		bad("MQTT-3.3.2-14 Response Topic with wildcard", v5, Pkt(hPublish, S("a"), Props(0x08, S("r/#"))), errProto, proto),
		bad("MQTT 5.0 §3.3.2.3.9 Content Type twice", v5, Pkt(hPublish, S("a"), Props(0x03, S("x"), 0x03, S("y"))), errProto, proto),
		bad("MQTT 5.0 §3.3.2.3.4 Topic Alias twice", v5, Pkt(hPublish, S("a"), Props(0x23, U16(1), 0x23, U16(1))), errProto, proto),
		bad("MQTT 5.0 §3.3.2.3.8 Subscription Identifier 0", v5, Pkt(hPublish, S("a"), Props(0x0B, 0)), errProto, proto),
		bad("MQTT-1.5.5-1 Subscription Identifier not minimal", v5, Pkt(hPublish, S("a"), Props(0x0B, 0x81, 0x00)), errMal, mal),
		bad("MQTT 5.0 §2.2.2.2 Session Expiry not allowed in PUBLISH", v5, Pkt(hPublish, S("a"), Props(0x11, U32(0))), errMal, mal),
		bad("MQTT 5.0 §2.2.2 PUBLISH without property length", v5, Pkt(hPublish, S("a")), errMal, mal),
		bad("MQTT 5.0 §2.2.2 PUBLISH property length longer than the rest", v5, Pkt(hPublish, S("a"), 5, 0x01), errMal, mal),
		bad("MQTT 5.0 §2.2.2 PUBLISH property length of 5 bytes", v5, Pkt(hPublish, S("a"), 0x80, 0x80, 0x80, 0x80, 0x01), errMal, mal),
		bad("MQTT-3.3.2-14 Response Topic empty", v5, Pkt(hPublish, S("a"), Props(0x08, S(""))), errProto, proto),
	)

	// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----
	add(
		valid("PUBACK 3.1.1", v311, Pkt(hPuback, U16(1)), &packet.Puback{PacketID: 1}),
		valid("PUBREC 3.1", v31, Pkt(hPubrec, U16(2)), &packet.Pubrec{PacketID: 2}),
		valid("PUBREL 3.1.1", v311, Pkt(hPubrel, U16(3)), &packet.Pubrel{PacketID: 3}),
		nonCanon("PUBREL 3.1 with DUP flag", v31, Pkt(0x6A, U16(3)), &packet.Pubrel{PacketID: 3}),
		valid("PUBCOMP 3.1.1", v311, Pkt(hPubcomp, U16(4)), &packet.Pubcomp{PacketID: 4}),
		valid("MQTT 5.0 §3.4.2.1 PUBACK remaining length 2", v5, Pkt(hPuback, U16(1)), &packet.Puback{PacketID: 1}),
		valid("MQTT 5.0 §3.5.2.1 PUBREC remaining length 2, identifier 65535", v5, Pkt(hPubrec, U16(0xFFFF)), &packet.Pubrec{PacketID: 0xFFFF}),
		valid("MQTT 5.0 §3.6.2.1 PUBREL remaining length 2", v5, Pkt(hPubrel, U16(0x1234)), &packet.Pubrel{PacketID: 0x1234}),
		valid("MQTT 5.0 §3.7.2.1 PUBCOMP remaining length 2", v5, Pkt(hPubcomp, U16(0x100)), &packet.Pubcomp{PacketID: 0x100}),
		valid("MQTT 5.0 §3.4.2.1 PUBACK reason only", v5, Pkt(hPuback, U16(1), 0x10), &packet.Puback{PacketID: 1, ReasonCode: packet.NoMatchingSubscribers}),
		nonCanon("MQTT 5.0 §3.4.2.1 PUBACK success written out", v5, Pkt(hPuback, U16(1), 0x00), &packet.Puback{PacketID: 1}),
		nonCanon("MQTT 5.0 §3.4.2.2 PUBACK empty property list", v5, Pkt(hPuback, U16(1), 0x87, 0), &packet.Puback{PacketID: 1, ReasonCode: packet.NotAuthorized}),
		valid("PUBACK 5.0 with reason string and user property", v5, Pkt(hPuback, U16(1), 0x87, Props(0x1F, S("denied"), 0x26, S("a"), S("b"))),
			&packet.Puback{PacketID: 1, ReasonCode: packet.NotAuthorized,
				Properties: NewP().Set(packet.PropReasonString, "denied").Set(packet.PropUser, [2]string{"a", "b"}).Build()}),
		valid("PUBREC 5.0 quota exceeded", v5, Pkt(hPubrec, U16(5), 0x97), &packet.Pubrec{PacketID: 5, ReasonCode: packet.QuotaExceeded}),
		valid("PUBREL 5.0 packet identifier not found", v5, Pkt(hPubrel, U16(5), 0x92), &packet.Pubrel{PacketID: 5, ReasonCode: packet.PacketIDNotFound}),
		valid("PUBCOMP 5.0 with reason string", v5, Pkt(hPubcomp, U16(5), 0x00, Props(0x1F, S("x"))),
			&packet.Pubcomp{PacketID: 5, Properties: NewP().Set(packet.PropReasonString, "x").Build()}),
		bad("PUBACK 3.1.1 remaining length 3", v311, Pkt(hPuback, U16(1), 0), errMal, mal),
		bad("PUBACK remaining length 1", v5, Pkt(hPuback, 1), errMal, mal),
		bad("PUBACK remaining length 0", v311, Pkt(hPuback), errMal, mal),
		bad("MQTT-2.2.1-3 PUBACK packet identifier 0", v311, Pkt(hPuback, U16(0)), errProto, proto),
		bad("MQTT-2.2.1-3 PUBREL packet identifier 0", v5, Pkt(hPubrel, U16(0)), errProto, proto),
		bad("MQTT 5.0 §3.4.2.1 PUBACK reason code 0x92", v5, Pkt(hPuback, U16(1), 0x92), errMal, mal),
		bad("MQTT 5.0 §3.6.2.1 PUBREL reason code 0x10", v5, Pkt(hPubrel, U16(1), 0x10), errMal, mal),
		bad("MQTT 5.0 §3.7.2.1 PUBCOMP reason code 0x80", v5, Pkt(hPubcomp, U16(1), 0x80), errMal, mal),
		bad("MQTT 5.0 §2.2.2.2 Topic Alias not allowed in PUBACK", v5, Pkt(hPuback, U16(1), 0, Props(0x23, U16(1))), errMal, mal),
		bad("MQTT 5.0 §3.4.2.2.2 Reason String twice", v5, Pkt(hPuback, U16(1), 0, Props(0x1F, S("a"), 0x1F, S("b"))), errProto, proto),
		bad("PUBACK 5.0 bytes after properties", v5, Pkt(hPuback, U16(1), 0, Props(), 0), errMal, mal),
	)

	// ---- SUBSCRIBE, SUBACK ----
	add(
		valid("SUBSCRIBE 3.1.1 two filters", v311, Pkt(hSubscribe, U16(10), S("a/+"), 1, S("b/#"), 2),
			&packet.Subscribe{PacketID: 10, Subscriptions: []packet.Subscription{{Filter: "a/+", QoS: 1}, {Filter: "b/#", QoS: 2}}}),
		valid("SUBSCRIBE 3.1 one filter", v31, Pkt(hSubscribe, U16(1), S("#"), 0),
			&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "#"}}}),
		nonCanon("SUBSCRIBE 3.1 with DUP flag", v31, Pkt(0x8A, U16(1), S("#"), 0),
			&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "#"}}}),
		valid("SUBSCRIBE 3.1.1 shared subscription syntax", v311, Pkt(hSubscribe, U16(2), S("$share/g/x/#"), 1),
			&packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "$share/g/x/#", QoS: 1}}}),
		valid("SUBSCRIBE 5.0 options and properties", v5,
			Pkt(hSubscribe, U16(3), Props(0x0B, 0xFF, 0xFF, 0xFF, 0x7F, 0x26, S("k"), S("v")),
				S("a/b"), 0x2D, S("$share/grp/c"), 0x1A, S("+"), 0x00),
			&packet.Subscribe{PacketID: 3,
				Properties: NewP().Set(packet.PropSubscriptionID, uint32(268435455)).Set(packet.PropUser, [2]string{"k", "v"}).Build(),
				Subscriptions: []packet.Subscription{
					{Filter: "a/b", QoS: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2},
					{Filter: "$share/grp/c", QoS: 2, RetainAsPublished: true, RetainHandling: 1},
					{Filter: "+"},
				}}),
		bad("MQTT-3.8.3-3 SUBSCRIBE without filters 3.1.1", v311, Pkt(hSubscribe, U16(1)), errProto, proto),
		bad("MQTT-3.8.3-2 SUBSCRIBE without filters 5.0", v5, Pkt(hSubscribe, U16(1), Props()), errProto, proto),
		bad("MQTT-2.2.1-3 SUBSCRIBE packet identifier 0", v311, Pkt(hSubscribe, U16(0), S("a"), 0), errProto, proto),
		bad("MQTT-3-8.3-4 3.1.1 reserved option bits", v311, Pkt(hSubscribe, U16(1), S("a"), 0x04), errMal, mal),
		bad("MQTT-3-8.3-4 3.1.1 QoS 3", v311, Pkt(hSubscribe, U16(1), S("a"), 0x03), errMal, mal),
		bad("MQTT-3.8.3-5 5.0 reserved option bits", v5, Pkt(hSubscribe, U16(1), Props(), S("a"), 0x40), errMal, mal),
		bad("MQTT 5.0 §3.8.3.1 Maximum QoS 3", v5, Pkt(hSubscribe, U16(1), Props(), S("a"), 0x03), errProto, proto),
		bad("MQTT 5.0 §3.8.3.1 Retain Handling 3", v5, Pkt(hSubscribe, U16(1), Props(), S("a"), 0x30), errProto, proto),
		bad("MQTT-3.8.3-4 No Local on a shared subscription", v5, Pkt(hSubscribe, U16(1), Props(), S("$share/g/a"), 0x04), errProto, proto),
		bad("MQTT-4.7.1-2 # not last", v311, Pkt(hSubscribe, U16(1), S("a/#/b"), 0), errProto, proto),
		bad("MQTT-4.7.1-3 + inside a level", v311, Pkt(hSubscribe, U16(1), S("a/b+"), 0), errProto, proto),
		bad("MQTT-4.7.3-1 empty filter", v311, Pkt(hSubscribe, U16(1), S(""), 0), errProto, proto),
		bad("MQTT-4.8.2-1 shared subscription without filter", v5, Pkt(hSubscribe, U16(1), Props(), S("$share/g"), 0), errProto, proto),
		bad("MQTT-4.8.2-2 shared group with wildcard", v5, Pkt(hSubscribe, U16(1), Props(), S("$share/g+/a"), 0), errProto, proto),
		bad("MQTT-1.5.4-1 filter not UTF-8", v311, Pkt(hSubscribe, U16(1), S("\xff"), 0), errMal, mal),
		bad("SUBSCRIBE filter without options byte", v311, Pkt(hSubscribe, U16(1), S("a")), errMal, mal),
		bad("SUBSCRIBE filter length beyond the packet", v311, Pkt(hSubscribe, U16(1), U16(9), "a", 0), errMal, mal),
		bad("MQTT 5.0 §3.8.2.1.2 two Subscription Identifiers", v5, Pkt(hSubscribe, U16(1), Props(0x0B, 1, 0x0B, 2), S("a"), 0), errProto, proto),
		bad("MQTT 5.0 §3.8.2.1.2 Subscription Identifier 0", v5, Pkt(hSubscribe, U16(1), Props(0x0B, 0), S("a"), 0), errProto, proto),
		bad("MQTT 5.0 §2.2.2.2 Reason String not allowed in SUBSCRIBE", v5, Pkt(hSubscribe, U16(1), Props(0x1F, S("x")), S("a"), 0), errMal, mal),

		valid("SUBACK 3.1.1 all return codes", v311, Pkt(hSuback, U16(10), 0, 1, 2, 0x80),
			&packet.Suback{PacketID: 10, ReasonCodes: []packet.ReasonCode{0, 1, 2, 0x80}}),
		valid("SUBACK 5.0 with reason string", v5, Pkt(hSuback, U16(10), Props(0x1F, S("r")), 0x01, 0x87, 0xA2),
			&packet.Suback{PacketID: 10, Properties: NewP().Set(packet.PropReasonString, "r").Build(),
				ReasonCodes: []packet.ReasonCode{packet.GrantedQoS1, packet.NotAuthorized, packet.WildcardSubsNotSupported}}),
		bad("MQTT-3.9.3-2 SUBACK 3.1.1 return code 0x03", v311, Pkt(hSuback, U16(1), 3), errMal, mal),
		bad("MQTT-3.9.3-2 SUBACK 3.1.1 return code 0x87", v311, Pkt(hSuback, U16(1), 0x87), errMal, mal),
		bad("MQTT 5.0 §3.9.3 SUBACK reason code 0x10", v5, Pkt(hSuback, U16(1), Props(), 0x10), errMal, mal),
		bad("SUBACK without return codes", v311, Pkt(hSuback, U16(1)), errProto, proto),
		bad("MQTT 5.0 §2.2.2.2 Subscription Identifier not allowed in SUBACK", v5, Pkt(hSuback, U16(1), Props(0x0B, 1), 0), errMal, mal),
	)

	// ---- UNSUBSCRIBE, UNSUBACK ----
	add(
		valid("UNSUBSCRIBE 3.1.1", v311, Pkt(hUnsubscribe, U16(4), S("a/+"), S("$share/g/#")),
			&packet.Unsubscribe{PacketID: 4, Filters: []string{"a/+", "$share/g/#"}}),
		valid("UNSUBSCRIBE 5.0 user property", v5, Pkt(hUnsubscribe, U16(4), Props(0x26, S("k"), S("")), S("a")),
			&packet.Unsubscribe{PacketID: 4, Filters: []string{"a"}, Properties: NewP().Set(packet.PropUser, [2]string{"k", ""}).Build()}),
		nonCanon("UNSUBSCRIBE 3.1 with DUP flag", v31, Pkt(0xAA, U16(4), S("a")), &packet.Unsubscribe{PacketID: 4, Filters: []string{"a"}}),
		bad("MQTT-3.10.3-2 UNSUBSCRIBE without filters", v311, Pkt(hUnsubscribe, U16(1)), errProto, proto),
		bad("MQTT-4.7.1-2 UNSUBSCRIBE invalid filter", v5, Pkt(hUnsubscribe, U16(1), Props(), S("#/a")), errProto, proto),
		bad("MQTT 5.0 §2.2.2.2 Subscription Identifier not allowed in UNSUBSCRIBE", v5, Pkt(hUnsubscribe, U16(1), Props(0x0B, 1), S("a")), errMal, mal),
		bad("UNSUBSCRIBE truncated filter", v311, Pkt(hUnsubscribe, U16(1), S("a"), 0), errMal, mal),

		valid("UNSUBACK 3.1.1", v311, Pkt(hUnsuback, U16(4)), &packet.Unsuback{PacketID: 4}),
		valid("UNSUBACK 5.0", v5, Pkt(hUnsuback, U16(4), Props(), 0x00, 0x11),
			&packet.Unsuback{PacketID: 4, ReasonCodes: []packet.ReasonCode{packet.Success, packet.NoSubscriptionExisted}}),
		bad("UNSUBACK 3.1.1 trailing byte", v311, Pkt(hUnsuback, U16(4), 0), errMal, mal),
		bad("MQTT-3.11.3-1 UNSUBACK 5.0 without reason codes", v5, Pkt(hUnsuback, U16(4), Props()), errProto, proto),
		bad("MQTT 5.0 §3.11.3 UNSUBACK reason code 0x01", v5, Pkt(hUnsuback, U16(4), Props(), 0x01), errMal, mal),
	)

	// ---- PINGREQ, PINGRESP, DISCONNECT, AUTH ----
	add(
		valid("PINGREQ", v311, Pkt(hPingreq), &packet.Pingreq{}),
		valid("PINGRESP 5.0", v5, Pkt(hPingresp), &packet.Pingresp{}),
		bad("MQTT 3.12 PINGREQ with a body", v311, Pkt(hPingreq, 0), errMal, mal),
		bad("MQTT 3.13 PINGRESP with a body", v5, Pkt(hPingresp, 0), errMal, mal),
		valid("DISCONNECT 3.1.1", v311, Pkt(hDisconnect), &packet.Disconnect{}),
		nonCanon("MQTT 5.0 §3.14.2.1 DISCONNECT remaining length 0", v5, Pkt(hDisconnect), &packet.Disconnect{}),
		valid("DISCONNECT 5.0 normal disconnection", v5, Pkt(hDisconnect, 0x00), &packet.Disconnect{}),
		valid("DISCONNECT 5.0 with will", v5, Pkt(hDisconnect, 0x04), &packet.Disconnect{ReasonCode: packet.DisconnectWithWill}),
		nonCanon("DISCONNECT 5.0 normal written out", v5, Pkt(hDisconnect, 0x00, 0x00), &packet.Disconnect{}),
		valid("DISCONNECT 5.0 with properties", v5, Pkt(hDisconnect, 0x8B, Props(0x11, U32(0), 0x1C, S("b2"), 0x1F, S("bye"))),
			&packet.Disconnect{ReasonCode: packet.ServerShuttingDown, Properties: NewP().Set(packet.PropSessionExpiry, uint32(0)).
				Set(packet.PropServerReference, "b2").Set(packet.PropReasonString, "bye").Build()}),
		bad("DISCONNECT 3.1.1 with a body", v311, Pkt(hDisconnect, 0), errMal, mal),
		bad("MQTT 5.0 §3.14.2.1 DISCONNECT reason code 0x01", v5, Pkt(hDisconnect, 0x01), errMal, mal),
		bad("MQTT 5.0 §2.2.2.2 Topic Alias not allowed in DISCONNECT", v5, Pkt(hDisconnect, 0, Props(0x23, U16(1))), errMal, mal),
		nonCanon("MQTT 5.0 §3.15.2.1 AUTH remaining length 0", v5, Pkt(hAuth), &packet.Auth{}),
		valid("AUTH 5.0 success", v5, Pkt(hAuth, 0x00, Props()), &packet.Auth{}),
		valid("AUTH 5.0 continue authentication", v5, Pkt(hAuth, 0x18, Props(0x15, S("SCRAM-SHA-256"), 0x16, S("c=biws"))),
			&packet.Auth{ReasonCode: packet.ContinueAuthentication, Properties: NewP().Set(packet.PropAuthMethod, "SCRAM-SHA-256").
				Set(packet.PropAuthData, []byte("c=biws")).Build()}),
		valid("AUTH 5.0 re-authenticate without properties", v5, Pkt(hAuth, 0x19, Props()), &packet.Auth{ReasonCode: packet.ReAuthenticate}),
		nonCanon("AUTH 5.0 reason only", v5, Pkt(hAuth, 0x19), &packet.Auth{ReasonCode: packet.ReAuthenticate}),
		bad("MQTT 5.0 §3.15.2.1 AUTH reason code 0x00 0x01", v5, Pkt(hAuth, 0x01, Props()), errMal, mal),
		bad("MQTT 5.0 §3.15.2.2 AUTH data without method", v5, Pkt(hAuth, 0x18, Props(0x16, S("x"))), errProto, proto),
		bad("MQTT 5.0 §3.15.2.2.2 Authentication Method twice", v5, Pkt(hAuth, 0x18, Props(0x15, S("a"), 0x15, S("a"))), errProto, proto),
	)
	return cs
}

// EncodeCases are packets the encoder must refuse.
var EncodeCases = []EncodeCase{
	{"MQTT-3.3.1-4 PUBLISH QoS 3", v311, &packet.Publish{QoS: 3, Topic: "a", PacketID: 1}, errMal},
	{"MQTT-2.2.1-3 PUBLISH QoS 1 packet identifier 0", v311, &packet.Publish{QoS: 1, Topic: "a"}, errProto},
	{"MQTT-2.2.1-2 PUBLISH QoS 0 with packet identifier", v5, &packet.Publish{Topic: "a", PacketID: 1}, errProto},
	{"MQTT-3.3.1-2 PUBLISH QoS 0 with DUP", v311, &packet.Publish{Dup: true, Topic: "a"}, errProto},
	{"MQTT-3.3.2-2 PUBLISH topic with wildcard", v311, &packet.Publish{Topic: "a/#"}, errProto},
	{"MQTT-4.7.3-1 PUBLISH empty topic 3.1.1", v311, &packet.Publish{Topic: ""}, errProto},
	{"PUBLISH empty topic with alias for 3.1.1 (alias dropped)", v311,
		&packet.Publish{Properties: NewP().Set(packet.PropTopicAlias, uint16(1)).Build()}, errProto},
	{"PUBLISH 5.0 empty topic without alias", v5, &packet.Publish{}, errProto},
	{"MQTT-3.3.2-8 PUBLISH Topic Alias 0", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropTopicAlias, uint16(0)).Build()}, errProto},
	{"PUBLISH Session Expiry not allowed", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropSessionExpiry, uint32(1)).Build()}, errProto},
	{"PUBLISH unknown property bit", v5, &packet.Publish{Topic: "a", Properties: packet.Properties{Present: 1 << 5}}, errProto},
	{"PUBLISH Payload Format 2", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropPayloadFormat, byte(2)).Build()}, errProto},
	{"PUBLISH Subscription Identifier 0", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropSubscriptionID, uint32(0)).Build()}, errProto},
	{"PUBLISH Subscription Identifier too large", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropSubscriptionID, uint32(1<<28)).Build()}, errProto},
	{"MQTT-1.5.4-2 PUBLISH user property with U+0000", v5, &packet.Publish{Topic: "a", Properties: NewP().Set(packet.PropUser, [2]string{"a\x00", "b"}).Build()}, errProto},
	{"MQTT-1.5.4-1 PUBLISH topic not UTF-8", v311, &packet.Publish{Topic: "\xff"}, errProto},
	{"CONNECT 3.1.1 password without user name", v311, &packet.Connect{ClientID: "c", PasswordFlag: true, Password: []byte("p")}, errProto},
	{"CONNECT user name without flag", v5, &packet.Connect{ClientID: "c", Username: "u"}, errProto},
	{"CONNECT password without flag", v5, &packet.Connect{ClientID: "c", Password: []byte("p")}, errProto},
	{"CONNECT will QoS 3", v311, &packet.Connect{ClientID: "c", Will: &packet.Will{Topic: "t", QoS: 3}}, errMal},
	{"CONNECT will topic with wildcard", v311, &packet.Connect{ClientID: "c", Will: &packet.Will{Topic: "t/+"}}, errProto},
	{"CONNECT protocol name does not match version", v311, &packet.Connect{ProtocolName: "MQIsdp", Version: packet.V311, ClientID: "c"}, errProto},
	{"CONNECT Topic Alias property", v5, &packet.Connect{ClientID: "c", Properties: NewP().Set(packet.PropTopicAlias, uint16(1)).Build()}, errProto},
	{"CONNECT Receive Maximum 0", v5, &packet.Connect{ClientID: "c", Properties: NewP().Set(packet.PropReceiveMaximum, uint16(0)).Build()}, errProto},
	{"CONNECT Authentication Data without Method", v5, &packet.Connect{ClientID: "c", Properties: NewP().Set(packet.PropAuthData, []byte("x")).Build()}, errProto},
	{"CONNECT will Session Expiry", v5, &packet.Connect{ClientID: "c", Will: &packet.Will{Topic: "t",
		Properties: NewP().Set(packet.PropSessionExpiry, uint32(1)).Build()}}, errProto},
	{"CONNECT client id too long", v311, &packet.Connect{ClientID: string(Repeat('a', 70000))}, errProto},
	{"CONNACK session present with error", v5, &packet.Connack{SessionPresent: true, ReasonCode: packet.NotAuthorized}, errProto},
	{"CONNACK 5.0 reason code 0x10", v5, &packet.Connack{ReasonCode: packet.NoMatchingSubscribers}, errMal},
	{"CONNACK Maximum QoS 2", v5, &packet.Connack{Properties: NewP().Set(packet.PropMaximumQoS, byte(2)).Build()}, errProto},
	{"PUBACK packet identifier 0", v5, &packet.Puback{}, errProto},
	{"PUBREL reason code 0x10", v5, &packet.Pubrel{PacketID: 1, ReasonCode: packet.NoMatchingSubscribers}, errMal},
	{"PUBACK User Property with invalid UTF-8", v5, &packet.Puback{PacketID: 1, Properties: NewP().Set(packet.PropUser, [2]string{"k", "\xc0"}).Build()}, errProto},
	{"SUBSCRIBE without filters", v311, &packet.Subscribe{PacketID: 1}, errProto},
	{"SUBSCRIBE invalid filter", v311, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a#"}}}, errProto},
	{"SUBSCRIBE QoS 3", v311, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a", QoS: 3}}}, errMal},
	{"SUBSCRIBE Retain Handling 3", v5, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a", RetainHandling: 3}}}, errProto},
	{"MQTT-3.8.3-4 SUBSCRIBE No Local shared", v5, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "$share/g/a", NoLocal: true}}}, errProto},
	{"SUBSCRIBE two Subscription Identifiers", v5, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a"}},
		Properties: NewP().Set(packet.PropSubscriptionID, uint32(1)).Set(packet.PropSubscriptionID, uint32(2)).Build()}, errProto},
	{"SUBACK without codes", v5, &packet.Suback{PacketID: 1}, errProto},
	{"SUBACK 3.1.1 code 0x03", v311, &packet.Suback{PacketID: 1, ReasonCodes: []packet.ReasonCode{3}}, errMal},
	{"SUBACK 5.0 code 0x11", v5, &packet.Suback{PacketID: 1, ReasonCodes: []packet.ReasonCode{packet.NoSubscriptionExisted}}, errMal},
	{"UNSUBSCRIBE without filters", v5, &packet.Unsubscribe{PacketID: 1}, errProto},
	{"UNSUBACK 5.0 without codes", v5, &packet.Unsuback{PacketID: 1}, errProto},
	{"DISCONNECT 5.0 reason code 0x01", v5, &packet.Disconnect{ReasonCode: 0x01}, errMal},
	{"DISCONNECT Topic Alias property", v5, &packet.Disconnect{Properties: NewP().Set(packet.PropTopicAlias, uint16(1)).Build()}, errProto},
	{"AUTH in 3.1.1", v311, &packet.Auth{}, errMal},
	{"AUTH reason code 0x87", v5, &packet.Auth{ReasonCode: packet.NotAuthorized}, errMal},
	{"unknown version", packet.Version(7), &packet.Pingreq{}, nil},
	{"nil packet", v311, (*packet.Publish)(nil), nil},
	{"nil interface", v311, nil, nil},
}
