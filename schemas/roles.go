package schemas

// Durable consumer names. Replicas of a service share their consumer, which
// is how every service scales out.
const (
	ConsumerAuthn          = "authn"
	ConsumerPolicy         = "policy"
	ConsumerReaper         = "reaper"
	ConsumerAuditDecisions = "audit-decisions"
	ConsumerAuditSessions  = "audit-sessions"
	// ConsumerReaperLeases reads decisions: an allowed job.start grants a
	// lease, an allowed job.heartbeat extends one.
	ConsumerReaperLeases = "reaper-leases"
)

// Roles are the NATS identities of the dev stack, one per service plus the
// ML platform that publishes requests.
const (
	RoleAuthn    = "authn"
	RolePolicy   = "policy"
	RoleAudit    = "audit"
	RoleReaper   = "reaper"
	RolePlatform = "platform"
	// RoleGateway is services/gateway: it publishes requests on behalf of
	// HTTP and MCP callers and reads its own inbox, nothing else.
	RoleGateway = "gateway"
	// RoleOperator stages policy sets and edits the entity store (CLI).
	RoleOperator = "operator"
	// RoleProvisioner creates the streams, buckets and consumers (aigov bus
	// provision) before any service starts; no service holds it.
	RoleProvisioner = "provisioner"
)

// Message size limits. A request stream takes anything up to
// MaxRequestBytes, far more than authn's own limits (a 16 KiB token, a
// context of MaxContextBytes), so that an oversized token or context always
// reaches authn and gets an audited deny with its code rather than a bus
// refusal nobody audits.
const (
	// MaxRequestBytes bounds a request message (the request stream's
	// MaxMsgSize); a larger publish is refused by JetStream with an error
	// the SDK and the CLI report as a bus refusal.
	MaxRequestBytes = 1 << 20
	// MaxMessageBytes bounds every other event: a context of
	// MaxContextBytes whose every byte JSON-escapes to six (`<` is
	// written \u003c), the principal and the envelope fit with room.
	MaxMessageBytes = 256 << 10
	// MaxDeadLetterBytes bounds a dead letter, which carries a whole
	// request (base64 when it is not UTF-8) and the reason.
	MaxDeadLetterBytes = 2 * MaxRequestBytes
	// MaxPayloadBytes is the server's max_payload: the largest of the above
	// with room for headers.
	MaxPayloadBytes = MaxDeadLetterBytes + 64<<10
	// MaxEntityBytes bounds one entity in the entity store.
	MaxEntityBytes = 64 << 10
)

// ConsumerDeadLetter is the audit's dead-letter worker: it reads the
// advisories stream and turns each advisory into a dead-letter event.
const ConsumerDeadLetter = "audit-dead-letter"

// InboxPrefix is the custom inbox prefix of a role's connection. Giving each
// user its own inbox lets the server stop one user reading another's replies.
func InboxPrefix(role string) string { return "_INBOX." + role }

// Roles lists every role of the bus.
func Roles() []string {
	return []string{RoleAuthn, RolePolicy, RoleReaper, RoleAudit, RolePlatform, RoleGateway, RoleOperator, RoleProvisioner}
}
