package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/moatmq/moat/internal/config"
)

// newLogger builds the broker's slog.Logger from the log settings. The
// returned function closes a log file, if one was opened.
func newLogger(lc config.Log, stderr io.Writer) (*slog.Logger, func(), error) {
	var level slog.Level
	switch strings.ToLower(lc.Level) {
	case "debug":
		level = slog.LevelDebug
	case "", "info":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, nil, fmt.Errorf("log: unknown level %q", lc.Level)
	}
	var ws []io.Writer
	closer := func() {}
	for _, d := range lc.Dest {
		switch d {
		case "stderr":
			ws = append(ws, stderr)
		case "stdout":
			ws = append(ws, os.Stdout)
		case "file":
			f, err := os.OpenFile(lc.File, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
			if err != nil {
				return nil, nil, fmt.Errorf("log: %w", err)
			}
			ws = append(ws, f)
			closer = func() { f.Close() }
		}
	}
	var w io.Writer = io.Discard
	switch len(ws) {
	case 0:
	case 1:
		w = ws[0]
	default:
		w = io.MultiWriter(ws...)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch {
	case !lc.Timestamps:
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	case lc.TimestampFormat != "":
		tf, err := config.ParseTimeFormat(lc.TimestampFormat)
		if err != nil {
			return nil, nil, fmt.Errorf("log: timestamp_format: %w", err)
		}
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
				return slog.String(slog.TimeKey, tf.Format(a.Value.Time()))
			}
			return a
		}
	}
	var h slog.Handler
	if lc.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h), closer, nil
}
