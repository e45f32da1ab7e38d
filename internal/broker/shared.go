package broker

import "github.com/moatmq/moat/internal/topic"

// Choosing the member of a shared subscription ($share/GROUP/FILTER)
// that receives a message: topic.SharedGroup.PickRanked rotates through
// the members, ranked here.

// memberRank returns how a shared subscription's member suits msg, for
// topic.SharedGroup.PickRanked: Unfit when it is offline or may not
// receive msg (a member refused by the policy is passed over, so that a
// group with one member the policy excludes still delivers to the
// others), Fit when one more message would take its backlog to the
// pushback mark (overload.go: it would hold the publisher back) or its
// queue is full, Preferred otherwise. So a group's messages go to the
// members that keep up, in turn, and a stalled member neither holds its
// publishers back nor collects messages others could take; only when
// every member is behind does one of them get the message as before.
func (s *Server) memberRank(msg *Message) func(*topic.Subscription) int {
	size := int64(len(msg.Topic) + len(msg.Payload))
	return func(sub *topic.Subscription) int {
		sess, _ := sub.Owner.(*session)
		if sess == nil {
			if sess = s.lookup(sub.ClientID); sess == nil {
				return topic.Unfit
			}
		}
		sess.mu.Lock()
		cl, online := sess.client, sess.conn != nil
		behind := online && sess.behindLocked(s, min(msg.QoS, sub.QoS), size)
		sess.mu.Unlock()
		if !online || cl != nil && !s.authorize(cl, ActionReceive, msg.Topic, msg.QoS, msg.Retain, "").Allow {
			return topic.Unfit
		}
		if behind {
			return topic.Fit
		}
		return topic.Preferred
	}
}
