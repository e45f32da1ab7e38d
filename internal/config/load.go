package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Load reads, parses and validates the configuration file at path. The
// syntax is chosen by DetectFormat. Relative paths inside the file
// (certificates, include_dir, log file) are used as written, relative to
// the working directory, as Mosquitto does.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates data read from the file called name (used
// for the format's extension and in error messages). A mosquitto.conf with
// include_dir reads the included files from disk. All problems are
// returned at once; each is an *Error (use errors.As).
func Parse(name string, data []byte) (*Config, error) {
	var (
		c    *Config
		errs []error
	)
	switch DetectFormat(name, data) {
	case FormatYAML:
		c, errs = parseYAML(name, data)
	default:
		c, errs = parseMosquitto(name, data, osReadDir, osReadFile)
	}
	if c != nil {
		errs = append(errs, c.validate()...)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return c, nil
}

// DetectFormat decides the syntax of a configuration file:
//
//  1. by extension: .yaml and .yml are YAML, .conf is mosquitto.conf;
//  2. otherwise by content: the first line that is neither blank nor a
//     comment (#) decides. It is YAML when it is a document marker ("---")
//     or starts a mapping: its first word ends in ':' (as in
//     "listeners:"), or it starts with '{'. Anything else ("listener 8883")
//     is mosquitto.conf. A file with no such line is mosquitto.conf (an
//     empty mosquitto.conf is valid and means Mosquitto's local-only mode).
func DetectFormat(name string, data []byte) Format {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml":
		return FormatYAML
	case ".conf":
		return FormatMosquitto
	}
	for raw := range bytes.SplitSeq(data, []byte("\n")) {
		text := strings.TrimSpace(string(raw))
		if text == "" || text[0] == '#' {
			continue
		}
		if text == "---" || strings.HasPrefix(text, "---") || text[0] == '{' {
			return FormatYAML
		}
		word, _, _ := strings.Cut(text, " ")
		word, _, _ = strings.Cut(word, "\t")
		if strings.HasSuffix(word, ":") {
			return FormatYAML
		}
		return FormatMosquitto
	}
	return FormatMosquitto
}
