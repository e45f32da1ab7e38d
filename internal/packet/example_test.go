package packet_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/moatmq/moat/internal/packet"
)

// A server reads packets with a Reader limited to its maximum packet size
// and answers protocol errors with the reason code they carry.
func ExampleReader() {
	var stream bytes.Buffer
	connect := &packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 30, ClientID: "sensor-17"}
	publish := &packet.Publish{QoS: 1, PacketID: 1, Topic: "factory/temp", Payload: []byte("21.5")}
	b, _ := packet.Append(nil, connect, 0)
	b, _ = packet.Append(b, publish, packet.V5)
	stream.Write(b)
	stream.Write([]byte{0x30, 0x04, 0x00, 0x01, '#', 0x00}) // PUBLISH to "#": not a topic name

	r := packet.NewReader(&stream, 1<<20)
	for {
		p, err := r.ReadPacket()
		if errors.Is(err, io.EOF) {
			break
		}
		var pe *packet.Error
		if errors.As(err, &pe) {
			fmt.Printf("close with DISCONNECT reason 0x%02X (%s)\n", byte(pe.Code), pe.Code)
			break
		}
		switch p := p.(type) {
		case *packet.Connect:
			fmt.Println("CONNECT", p.ClientID, "MQTT", p.Version)
		case *packet.Publish:
			fmt.Printf("PUBLISH %s %q\n", p.Topic, p.Payload)
		}
	}
	// Output:
	// CONNECT sensor-17 MQTT 5.0
	// PUBLISH factory/temp "21.5"
	// close with DISCONNECT reason 0x82 (protocol error)
}

// A message from a 5.0 publisher is forwarded to a 3.1.1 subscriber: the
// encoder drops what 3.1.1 cannot carry.
func ExampleAppend() {
	p := &packet.Publish{QoS: 1, PacketID: 7, Topic: "a/b", Payload: []byte("hi")}
	p.Properties.SetMessageExpiry(60)
	v5, _ := packet.Append(nil, p, packet.V5)
	v311, _ := packet.Append(nil, p, packet.V311)
	fmt.Printf("5.0:   % x\n3.1.1: % x\n", v5, v311)
	// Output:
	// 5.0:   32 0f 00 03 61 2f 62 00 07 05 02 00 00 00 3c 68 69
	// 3.1.1: 32 09 00 03 61 2f 62 00 07 68 69
}
