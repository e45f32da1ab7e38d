// Package topic holds Moat's topic matching structures: the subscription
// index the broker consults on every PUBLISH, the retained-message index it
// consults on every SUBSCRIBE, and MatchFilter, the plain filter matcher
// other packages (authorization, bridges) use for a single filter.
//
// Both indexes are tries keyed by topic levels. Readers (Index.Match,
// Retained.Get, Retained.Match, Retained.Range) take no lock: children are
// found in copy-on-write hash tables and subscription sets are published
// through atomic pointers. Writers (Subscribe, Unsubscribe, Set, Delete) are
// serialized by one mutex per index that readers never touch, and no mutex
// is held while a caller's callback runs. docs/design/topic-index.md
// describes the structure and its memory-ordering argument.
//
// Matching follows MQTT 3.1.1 and 5.0 section 4.7: '+' matches exactly one
// level, which may be empty; '#' matches its parent level and any number of
// child levels; empty levels are significant; and a topic name whose first
// character is '$' is not matched by a filter whose first character is a
// wildcard [MQTT-4.7.2-1].
//
// The package does not validate: callers check topic names and filters with
// packet.ValidTopicName, packet.ValidTopicFilter and packet.SplitShared first.
// Invalid input never panics; it is treated as literal levels.
package topic
