package mosquittodb

import "encoding/binary"

// fileBuilder writes persistence files the way Mosquitto 2.0 lays them
// out, for tests that need files Mosquitto would not write.
type fileBuilder struct{ b []byte }

func newFile() *fileBuilder {
	f := &fileBuilder{b: append([]byte(nil), magic[:]...)}
	f.b = binary.BigEndian.AppendUint32(f.b, 0) // CRC
	f.b = binary.BigEndian.AppendUint32(f.b, Version)
	return f
}

func (f *fileBuilder) chunk(typ uint32, body []byte) *fileBuilder {
	f.b = binary.BigEndian.AppendUint32(f.b, typ)
	f.b = binary.BigEndian.AppendUint32(f.b, uint32(len(body)))
	f.b = append(f.b, body...)
	return f
}

func (f *fileBuilder) cfg(lastID uint64) *fileBuilder {
	b := binary.LittleEndian.AppendUint64(nil, lastID)
	b = append(b, 1, 8, 0, 0, 0, 0, 0, 0)
	return f.chunk(chunkCfg, b)
}

// msg is a MSG_STORE chunk body; props are appended as given.
func msgBody(id uint64, topic string, payload []byte, qos, retain byte, props []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, id)
	b = binary.LittleEndian.AppendUint64(b, 0) // expiry
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.BigEndian.AppendUint16(b, 1)                  // source mid
	b = binary.BigEndian.AppendUint16(b, 3)                  // source id length
	b = binary.BigEndian.AppendUint16(b, 0)                  // source username length
	b = binary.BigEndian.AppendUint16(b, uint16(len(topic))) // topic length
	b = binary.BigEndian.AppendUint16(b, 1883)
	b = append(b, qos, retain)
	b = append(b, "pub"...)
	b = append(b, topic...)
	b = append(b, payload...)
	return append(b, props...)
}

func clientBody(id, user string, interval uint32) []byte {
	b := binary.LittleEndian.AppendUint64(nil, 0)
	b = binary.BigEndian.AppendUint32(b, interval)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	b = binary.BigEndian.AppendUint16(b, 1883)
	b = binary.BigEndian.AppendUint16(b, uint16(len(user)))
	b = append(b, 0, 0, 0, 0)
	b = append(b, id...)
	return append(b, user...)
}

func subBody(id, filter string, qos, opts byte, ident uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, ident)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(filter)))
	b = append(b, qos, opts, 0, 0)
	b = append(b, id...)
	return append(b, filter...)
}

func clientMsgBody(client string, storeID uint64, mid uint16, qos, state, retainDup, dir byte, props []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, storeID)
	b = binary.BigEndian.AppendUint16(b, mid)
	b = binary.BigEndian.AppendUint16(b, uint16(len(client)))
	b = append(b, qos, state, retainDup, dir)
	b = append(b, client...)
	return append(b, props...)
}

func retainBody(storeID uint64) []byte { return binary.LittleEndian.AppendUint64(nil, storeID) }

// sample is a small valid file with one of each chunk.
func sample() []byte {
	return newFile().cfg(3).
		chunk(chunkMsgStore, msgBody(1, "a/b", []byte("hello"), 1, 1, []byte{5, 0x03, 0, 2, 't', 'x'})).
		chunk(chunkMsgStore, msgBody(2, "q/1", []byte("queued"), 2, 0, nil)).
		chunk(chunkClient, clientBody("dev", "alice", 60)).
		chunk(chunkClientMsg, clientMsgBody("dev", 2, 1, 2, byte(StateQueued), 0, 1, []byte{2, 0x0B, 9})).
		chunk(chunkSub, subBody("dev", "q/+", 2, 0x04, 9)).
		chunk(chunkRetain, retainBody(1)).b
}
