package broker

import "testing"

func TestTrackerCounts(t *testing.T) {
	tr := newTracker()
	release := make(chan struct{})
	tr.goTracked(goReader, func() { <-release })
	tr.goTracked(goReader, func() { <-release })
	tr.goTracked(goWriter, func() { <-release })
	if got, want := tr.running(), "reader: 2, writer: 1"; got != want {
		t.Fatalf("running() = %q, want %q", got, want)
	}
	idle := tr.close()
	select {
	case <-idle:
		t.Fatal("idle while goroutines run")
	default:
	}
	close(release)
	<-idle
	if got := tr.running(); got != "" {
		t.Fatalf("running() = %q after all returned", got)
	}
}
