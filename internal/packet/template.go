package packet

// A broker sends each message to many receivers, and their PUBLISH packets
// are mostly the same bytes: every receiver with the same protocol version,
// QoS, retain flag and properties gets exactly the same QoS 0 packet, and
// QoS 1 and 2 packets differ only in the packet identifier and the DUP
// flag. AppendPublishTemplate encodes such a packet once and says where
// its identifier lies; PatchPublish turns a copy of it into the packet for
// one receiver. The result is byte for byte what Append writes for that
// receiver's packet (tested against Append on the shared table, and
// fuzzed).

// AppendPublishTemplate appends p to dst exactly as Append(dst, p, v) does
// and returns, for QoS 1 and 2, the offset in the result of the packet
// identifier (idAt); for QoS 0 idAt is 0. The bytes appended may be shared
// read-only by every receiver whose packet differs from p at most in the
// packet identifier and the DUP flag: each receiver copies them and
// completes its copy with PatchPublish. p.PacketID must be valid for
// p.QoS, as for Append (any non-zero value for QoS 1 and 2).
func AppendPublishTemplate(dst []byte, p *Publish, v Version) (out []byte, idAt int, err error) {
	// What Append does for a *Publish, without making p an interface
	// value: the caller's packet need not escape to the heap.
	if v, err = checkVersion(v); err != nil {
		return dst, 0, err
	}
	n, err := p.bodySize(v)
	if err != nil {
		return dst, 0, err
	}
	if n > maxVBI {
		return dst, 0, tooLarge(PUBLISH, uint64(1+4+n), MaxPacketSizeLimit)
	}
	out = append(dst, firstByte(PUBLISH, p.flags()))
	out = appendVBI(out, n)
	// Fixed header (the first byte and the remaining length), topic name
	// (a length and the bytes), then the identifier [MQTT-3.3.2].
	if p.QoS > 0 {
		idAt = len(out) + 2 + len(p.Topic)
	}
	return p.appendBody(out, v), idAt, nil
}

// PatchPublish sets the DUP flag and the packet identifier of b, a copy of
// a QoS 1 or 2 PUBLISH made by AppendPublishTemplate whose identifier lies
// at idAt. id must not be 0 [MQTT-2.2.1-3]. b must be the receiver's own
// copy, never the shared template.
func PatchPublish(b []byte, idAt int, dup bool, id uint16) {
	if dup {
		b[0] |= 0x08
	} else {
		b[0] &^= 0x08
	}
	b[idAt] = byte(id >> 8)
	b[idAt+1] = byte(id)
}
