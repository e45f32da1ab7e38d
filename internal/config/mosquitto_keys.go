package config

import "strings"

// knownKeys are the mosquitto.conf keys Moat reads (mapped, or accepted
// with a note). Kept in one place for the "keys are lower case" hint and
// for docs/configuration.md's compatibility table.
var knownKeys = map[string]bool{
	"listener": true, "port": true, "bind_address": true, "protocol": true, "socket_domain": true,
	"max_connections": true, "max_qos": true, "maximum_qos": true, "max_topic_alias": true, "use_username_as_clientid": true,
	"cafile": true, "capath": true, "certfile": true, "keyfile": true, "crlfile": true, "ciphers": true,
	"ciphers_tls1.3": true, "tls_version": true, "dhparamfile": true, "require_certificate": true,
	"use_identity_as_username": true, "use_subject_as_username": true,
	"per_listener_settings": true, "allow_anonymous": true, "password_file": true, "acl_file": true, "allow_zero_length_clientid": true, "auto_id_prefix": true,
	"max_keepalive": true, "max_packet_size": true, "message_size_limit": true, "max_inflight_messages": true,
	"max_inflight_bytes": true, "max_queued_bytes": true, "max_queued_messages": true, "queue_qos0_messages": true,
	"persistent_client_expiration": true, "session_owner_check": true, "retain_available": true, "sys_interval": true,
	"persistence": true, "retained_persistence": true, "persistence_location": true, "persistence_file": true,
	"autosave_interval": true, "autosave_on_changes": true,
	"log_dest": true, "log_type": true, "log_timestamp": true, "log_timestamp_format": true, "connection_messages": true,
	"pid_file": true, "user": true, "include_dir": true, "log_facility": true, "allow_duplicate_messages": true,
	"retry_interval": true, "set_tcp_nodelay": true, "check_retain_source": true,
	"websockets_log_level": true, "websockets_headers_size": true,
	// Moat extensions.
	"allow_insecure_ciphers": true, "global_max_connections": true, "max_topic_length": true, "max_topic_levels": true,
	"max_subscriptions": true, "max_sessions": true, "max_retained_messages": true, "max_retained_messages_per_identity": true,
	"connect_timeout": true, "max_preauth_packet_size": true, "max_subscription_bytes": true, "max_retained_bytes": true,
	"max_retained_bytes_per_identity": true, "read_budget": true,
	"pushback_messages": true, "pushback_bytes": true, "pushback_wait": true, "queue_full_policy": true,
}

const (
	hintBridge   = "Moat cannot bridge to other brokers yet; run the bridge on the other broker's side"
	hintPlugin   = "Mosquitto plugins are C shared libraries and cannot be loaded by Moat; Moat has the common ones built in: in Moat YAML, an auth list of backends (password_file, ldap, jwt, introspection) per listener or global, and an acl section (rules and/or acl_file); see docs/access-control.md"
	hintPSK      = "TLS-PSK is not available in Go's crypto/tls; use certificates (Moat's built-in CA issues them: moat ca issue)"
	hintEngine   = "OpenSSL engines are not supported; use a PEM key file"
	hintMosq21   = "this key is from a newer Mosquitto than 2.0 and is not supported"
	hintWSStatic = "Moat's WebSocket listeners do not serve static files"
)

// unsupportedKeys are Mosquitto keys Moat recognises but cannot honour
// yet. Ignoring them would silently weaken security or change behaviour,
// so each is an error with a hint.
var unsupportedKeys = map[string]string{
	"auth_plugin": hintPlugin, "plugin": hintPlugin,
	"global_plugin": hintPlugin, "auth_plugin_deny_special_chars": hintPlugin,
	"psk_file": hintPSK, "psk_hint": hintPSK,
	"tls_engine": hintEngine, "tls_keyform": hintEngine, "tls_engine_kpass_sha1": hintEngine,
	"mount_point":              "topic mount points are not supported yet",
	"bind_interface":           "bind the listener to the interface's address instead: listener PORT ADDRESS",
	"http_dir":                 hintWSStatic,
	"websockets_origin":        "WebSocket origin checks are not configurable from mosquitto.conf yet",
	"upgrade_outgoing_qos":     "this non-standard option is not supported",
	"clientid_prefixes":        "deprecated in Mosquitto; use client certificates with identity mapping instead",
	"memory_limit":             "a global heap limit is not supported; use limits (max_queued_messages, max_packet_size, max_connections)",
	"accept_protocol_versions": hintMosq21, "global_max_clients": hintMosq21,
	"enable_control_api": hintMosq21, "disable_client_cert_date_checks": hintMosq21, "max_topic_alias_broker": hintMosq21,
	"quic_log_level": hintMosq21,
	// Bridges.
	"connection": hintBridge, "address": hintBridge, "addresses": hintBridge, "topic": hintBridge,
	"cleansession": hintBridge, "local_cleansession": hintBridge, "keepalive_interval": hintBridge,
	"idle_timeout": hintBridge, "local_clientid": hintBridge, "local_password": hintBridge,
	"local_username": hintBridge, "notifications": hintBridge, "notifications_local_only": hintBridge,
	"notification_topic": hintBridge, "remote_clientid": hintBridge, "clientid": hintBridge,
	"remote_password": hintBridge, "password": hintBridge, "remote_username": hintBridge,
	"username": hintBridge, "restart_timeout": hintBridge, "round_robin": hintBridge,
	"start_type": hintBridge, "threshold": hintBridge, "try_private": hintBridge,
}

// unsupportedKey returns the hint for a Mosquitto key Moat does not
// support yet, including the auth_opt_*, plugin_opt_* and bridge_*
// families.
func unsupportedKey(key string) (string, bool) {
	if h, ok := unsupportedKeys[key]; ok {
		return h, true
	}
	switch {
	case strings.HasPrefix(key, "auth_opt_"), strings.HasPrefix(key, "plugin_opt_"):
		return hintPlugin, true
	case strings.HasPrefix(key, "bridge_"):
		return hintBridge, true
	}
	return "", false
}
