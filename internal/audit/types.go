package audit

// Event types callers record (an open set: new types are added here and in
// docs/audit.md). Types marked "decision" always carry a "reason" field;
// Record adds reason "unspecified" when the caller forgot it.
const (
	TypeAuthSuccess  = "auth.success"  // decision: a client authenticated
	TypeAuthFailure  = "auth.failure"  // decision: authentication refused
	TypeAuthzDeny    = "authz.deny"    // decision: publish, subscribe or will refused
	TypeBanAdd       = "ban.add"       // decision: a ban was added
	TypeBanRemove    = "ban.remove"    // decision: a ban was removed by an operator
	TypeBanExpire    = "ban.expire"    // a ban expired
	TypeBanLoad      = "ban.load"      // a ban in force when the broker started
	TypeBanImport    = "ban.import"    // decision: the bans file imported into the durable store
	TypeBanRefuse    = "ban.refuse"    // decision: a connection refused by a ban
	TypeDetect       = "detect"        // decision: abnormal behaviour detected, and the action taken
	TypeRevokeCutoff = "revoke.cutoff" // decision: a connected client cut off by revocation or expiry
	TypeCAIssue      = "ca.issue"      // decision: a certificate issued
	TypeCARevoke     = "ca.revoke"     // decision: a certificate revoked
	TypeAdminAction  = "admin.action"  // decision: an action through the admin API or CLI
	TypeConfigReload = "config.reload" // decision: a configuration reload applied or refused
	TypeLimit        = "limit"         // decision: a limit enforced on a client
	TypeAccessLost   = "access.lost"   // decision: a live session lost access (policy, password, LDAP, ban), and what was done
	TypeAuthRegrant  = "auth.regrant"  // decision: re-authentication changed a live client's groups or grants, and what the re-check took away
)

// decisionTypes are the types that must carry a reason.
var decisionTypes = map[string]bool{
	TypeAuthSuccess: true, TypeAuthFailure: true, TypeAuthzDeny: true,
	TypeBanAdd: true, TypeBanRemove: true, TypeBanRefuse: true, TypeBanImport: true, TypeDetect: true,
	TypeRevokeCutoff: true, TypeCAIssue: true, TypeCARevoke: true,
	TypeAdminAction: true, TypeConfigReload: true, TypeLimit: true, TypeAccessLost: true, TypeAuthRegrant: true,
}
