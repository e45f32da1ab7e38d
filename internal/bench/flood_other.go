//go:build !linux

package bench

import (
	"context"
	"errors"
)

// Flood is implemented on Linux only (raw sockets, epoll and /proc).
func Flood(ctx context.Context, cfg FloodConfig) (*FloodResult, error) {
	if _, _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	return nil, errors.New("bench: the connection flood runs on Linux only")
}
