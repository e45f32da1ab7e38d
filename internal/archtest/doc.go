// Package archtest holds no code: its tests enforce the dependency rules
// written in docs/design (which package may import which), so that a change
// that breaks the architecture fails `make test` instead of a review.
package archtest
