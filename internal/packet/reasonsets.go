package packet

// reasonSet is a set of reason codes, one bit per code.
type reasonSet [4]uint64

func newReasonSet(codes ...ReasonCode) reasonSet {
	var s reasonSet
	for _, c := range codes {
		s[c>>6] |= 1 << (c & 63)
	}
	return s
}

func (s *reasonSet) has(c ReasonCode) bool { return s[c>>6]&(1<<(c&63)) != 0 }

// The reason codes each MQTT 5 packet may carry [MQTT 5.0 §2.4 and the
// Reason Code section of each packet].
var (
	connackReasons = newReasonSet(Success, UnspecifiedError, MalformedPacket, ProtocolError,
		ImplementationSpecific, UnsupportedProtocolVersion, ClientIDNotValid, BadUsernameOrPassword,
		NotAuthorized, ServerUnavailable, ServerBusy, Banned, BadAuthenticationMethod, TopicNameInvalid,
		PacketTooLarge, QuotaExceeded, PayloadFormatInvalid, RetainNotSupported, QoSNotSupported,
		UseAnotherServer, ServerMoved, ConnectionRateExceeded)
	// PUBACK and PUBREC [MQTT 5.0 §3.4.2.1, §3.5.2.1].
	pubackReasons = newReasonSet(Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecific,
		NotAuthorized, TopicNameInvalid, PacketIDInUse, QuotaExceeded, PayloadFormatInvalid)
	// PUBREL and PUBCOMP [MQTT 5.0 §3.6.2.1, §3.7.2.1].
	pubrelReasons = newReasonSet(Success, PacketIDNotFound)
	subackReasons = newReasonSet(GrantedQoS0, GrantedQoS1, GrantedQoS2, UnspecifiedError,
		ImplementationSpecific, NotAuthorized, TopicFilterInvalid, PacketIDInUse, QuotaExceeded,
		SharedSubNotSupported, SubscriptionIDsNotSupported, WildcardSubsNotSupported)
	unsubackReasons = newReasonSet(Success, NoSubscriptionExisted, UnspecifiedError, ImplementationSpecific,
		NotAuthorized, TopicFilterInvalid, PacketIDInUse)
	disconnectReasons = newReasonSet(Success, DisconnectWithWill, UnspecifiedError, MalformedPacket,
		ProtocolError, ImplementationSpecific, NotAuthorized, ServerBusy, ServerShuttingDown,
		KeepAliveTimeout, SessionTakenOver, TopicFilterInvalid, TopicNameInvalid, ReceiveMaximumExceeded,
		TopicAliasInvalid, PacketTooLarge, MessageRateTooHigh, QuotaExceeded, AdministrativeAction,
		PayloadFormatInvalid, RetainNotSupported, QoSNotSupported, UseAnotherServer, ServerMoved,
		SharedSubNotSupported, ConnectionRateExceeded, MaximumConnectTime, SubscriptionIDsNotSupported,
		WildcardSubsNotSupported)
	authReasons = newReasonSet(Success, ContinueAuthentication, ReAuthenticate)
	// MQTT 3.1.1 SUBACK return codes [MQTT-3.9.3-2].
	v3SubackReasons = newReasonSet(GrantedQoS0, GrantedQoS1, GrantedQoS2, V3SubackFailure)
)

// ValidReasonCode reports whether an MQTT 5 packet of type t may carry
// reason code c. For types without a reason code it returns false.
func ValidReasonCode(t Type, c ReasonCode) bool {
	switch t {
	case CONNACK:
		return connackReasons.has(c)
	case PUBACK, PUBREC:
		return pubackReasons.has(c)
	case PUBREL, PUBCOMP:
		return pubrelReasons.has(c)
	case SUBACK:
		return subackReasons.has(c)
	case UNSUBACK:
		return unsubackReasons.has(c)
	case DISCONNECT:
		return disconnectReasons.has(c)
	case AUTH:
		return authReasons.has(c)
	}
	return false
}

func checkReason(t Type, c ReasonCode) error {
	if !ValidReasonCode(t, c) {
		return malformed(t, "reason code 0x%02X not valid in %s", byte(c), t)
	}
	return nil
}
