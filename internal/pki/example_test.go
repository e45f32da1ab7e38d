package pki_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/moatmq/moat/internal/pki"
)

// The broker's zero-config path: open the CA in a directory, creating it
// without any prompt on first run, and issue the broker's own certificate.
func ExampleOpenOrInit() {
	dir, _ := os.MkdirTemp("", "moat-ca")
	defer os.RemoveAll(dir)
	ca, created, err := pki.OpenOrInit(filepath.Join(dir, "ca"), pki.InitOptions{}) // passphrase generated into root.pass
	if err != nil {
		log.Fatal(err)
	}
	srv, err := ca.IssueServer("broker", []string{"DNS:localhost", "IP:127.0.0.1"}, 0)
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.WriteFiles(filepath.Join(dir, "broker")); err != nil { // broker.pem, broker.key
		log.Fatal(err)
	}
	dev, _ := ca.IssueDevice("sensor-042", nil, 0)
	ca.Revoke(dev.Record.Serial, pki.ReasonKeyCompromise)
	crl, _ := ca.CRL() // DER, also kept in DIR/crl.pem
	fmt.Println(created, srv.Certificate.DNSNames, dev.Record.Subject, len(crl) > 0)
	// Output: true [localhost] sensor-042 true
}
