package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
)

// Topology is the whole JetStream layout: streams, KV buckets and durable
// consumers. Every service ensures it at start; creation is idempotent, so
// the order in which services start does not matter.
type Topology struct {
	Subjects schemas.Subjects
	// Replicas for streams and buckets: 1 on one machine, 3 on a cluster.
	Replicas int
	// DuplicateWindow is how long JetStream remembers Nats-Msg-Ids.
	DuplicateWindow time.Duration
	// RequestMaxAge bounds how long an unprocessed request waits.
	RequestMaxAge time.Duration
	// EventMaxAge bounds how long verified, decision and session events stay
	// in their streams after they were consumed (ClickHouse keeps them).
	EventMaxAge time.Duration
	// RevocationTTL is how long a revocation is kept.
	RevocationTTL time.Duration
	// MarkerTTL is how long a bucket with per-key TTLs keeps the marker a
	// lapsed key leaves, so watchers (and a restarted reaper) see it.
	MarkerTTL time.Duration
	// Tenants are the ML platforms that connect in NATS accounts of their
	// own (see Accounts); none means every user shares one account.
	Tenants []string
}

// New returns the default topology under prefix.
func New(prefix string) Topology {
	return Topology{
		Subjects:        schemas.NewSubjects(prefix),
		Replicas:        1,
		DuplicateWindow: 2 * time.Minute,
		// A request waits for authn through a long outage: a shorter
		// age would drop queued requests without a trace.
		RequestMaxAge: 24 * time.Hour,
		EventMaxAge:   7 * 24 * time.Hour,
		RevocationTTL: 7 * 24 * time.Hour,
		MarkerTTL:     24 * time.Hour,
	}
}

// Stream names.
func (t Topology) StreamRequests() string { return t.name("REQUESTS") }

func (t Topology) StreamVerified() string { return t.name("VERIFIED") }

func (t Topology) StreamDecisions() string { return t.name("DECISIONS") }

func (t Topology) StreamSessions() string { return t.name("SESSIONS") }

// StreamDeadLetter holds dead-lettered events: messages a consumer gave up
// on (max deliveries, terminated) and events the audit could not decode.
// The audit consumes it like any other audited stream.
func (t Topology) StreamDeadLetter() string { return t.name("DLQ") }

// StreamAdvisories captures the server's max-deliveries and terminated
// advisories for the other streams' consumers, so that none is lost while
// the audit's dead-letter worker is down (a core NATS advisory has no
// subscriber then).
func (t Topology) StreamAdvisories() string { return t.name("ADVISORIES") }

// Signers are the roles whose keys sign the events of stream that the
// audit checks, as the trust file names them: an event is valid only under
// one of their keys. Streams of requests (signed by no aigov key), dead
// letters and verified events (policy checks those) have none.
func (t Topology) Signers(stream string) []string {
	switch stream {
	case t.StreamVerified():
		// Checked by policy, which denies what authn did not sign; the
		// audit checks what decisions and session events say.
		return nil
	case t.StreamDecisions():
		return []string{schemas.RoleAuthn, schemas.RolePolicy}
	case t.StreamSessions():
		// The kill switch CLI acts as the reaper, with its key.
		return []string{schemas.RoleReaper}
	case t.StreamGovernance():
		return []string{schemas.RolePolicy}
	}
	return nil
}

// Bucket names.
func (t Topology) BucketSessions() string { return strings.ToLower(t.name("sessions")) }

func (t Topology) BucketRevocations() string { return strings.ToLower(t.name("revocations")) }

// StreamAuditCheckpoints holds the audit's signed hash-chain checkpoints,
// on Subjects.Checkpoint(stream) for each audited stream, outside
// ClickHouse so that whoever can edit the audit tables cannot also rewrite
// what they are checked against. Only the audit publishes there, and the
// stream denies delete and purge: no credential can remove a checkpoint
// (old ones leave by the per-stream limit, CheckpointHistory).
func (t Topology) StreamAuditCheckpoints() string { return t.name("AUDIT_CHECKPOINTS") }

// CheckpointHistory is how many checkpoints are kept per audited stream.
const CheckpointHistory = 64

// MaxCheckpointBytes bounds one checkpoint message (a few hundred bytes
// of JSON).
const MaxCheckpointBytes = 4 << 10

// LegacyBucketAuditCheckpoints is the KV bucket that held the checkpoints
// before they moved to StreamAuditCheckpoints. It is no longer created;
// where a deployment still has it, the audit continues the chain from its
// newest checkpoint and `aigov audit verify` checks its checkpoints too
// (reading its stream, KV_<bucket>, by message only).
func (t Topology) LegacyBucketAuditCheckpoints() string {
	return strings.ToLower(t.name("audit_checkpoints"))
}

// BucketLeases holds live job leases; BucketLogoutJTIs remembers the jti of
// every back-channel logout token until it expires, to refuse replays.
func (t Topology) BucketLeases() string { return strings.ToLower(t.name("leases")) }

func (t Topology) BucketLogoutJTIs() string { return strings.ToLower(t.name("logout_jtis")) }

// BucketTokenIDs names the bucket of token ids (jti) already used, for the
// issuers with replay protection on. Each key lives until its token's exp.
func (t Topology) BucketTokenIDs() string { return strings.ToLower(t.name("token_ids")) }

// TokenIDMarkerTTL is how long the token id bucket keeps the marker of a
// key whose per-key TTL lapsed (nats-server 2.11+).
const TokenIDMarkerTTL = time.Minute

// StreamGovernance holds the policy service's governance events: policy
// sets activated or rejected, entity store changes, approvals used.
func (t Topology) StreamGovernance() string { return t.name("GOVERNANCE") }

// BucketPolicy holds the active policy set under PolicyActiveKey (history
// kept for rollback and audit); BucketPolicyProposals holds pushed sets,
// keyed by the hex of their hash, until a policy.update activates them.
func (t Topology) BucketPolicy() string { return strings.ToLower(t.name("policy")) }

func (t Topology) BucketPolicyProposals() string {
	return strings.ToLower(t.name("policy_proposals"))
}

// BucketEntities is the trusted entity store, one key per entity.
func (t Topology) BucketEntities() string { return strings.ToLower(t.name("entities")) }

// BucketApprovals holds granted approvals, one key per (digest, approver),
// each with its own TTL.
func (t Topology) BucketApprovals() string { return strings.ToLower(t.name("approvals")) }

// BucketApprovalRequests holds approval requests (ApprovalRequest), one key
// per request id. Only policy writes it, with compare-and-set on each
// key's revision (so a use is spent once across replicas); the operator CLI
// reads it (aigov approvals list|show).
func (t Topology) BucketApprovalRequests() string {
	return strings.ToLower(t.name("approval_requests"))
}

// ApprovalRequestsMaxAge is how long the approval requests bucket keeps a
// request after its last change: a request's own expiry is its ExpiresAt,
// this only bounds the bucket.
const ApprovalRequestsMaxAge = 30 * 24 * time.Hour

// MaxApprovalRequestBytes bounds one stored approval request (its context
// is at most MaxContextBytes).
const MaxApprovalRequestBytes = 64 << 10

// BucketSubjectKeys holds one AES-256 key per data subject (issuer and
// subject), under its personal.SubjectKeyID: the key that seals the
// person's email, name and personal context fields in every retained
// stream and audit table. Purging a key erases the person everywhere at
// once (crypto-shredding). authn creates keys, policy reads them to decide
// and purges one after an approved privacy.erase (and wraps one to an
// allowed privacy.export's ephemeral key); no other role reaches the bucket.
func (t Topology) BucketSubjectKeys() string { return strings.ToLower(t.name("subject_keys")) }

// SubjectKeysStream is the stream behind BucketSubjectKeys: what
// CreateKeyValue would make of its Buckets entry, except that it allows
// deleting a message. A KV purge only drops a key's message from the
// index, its bytes stay in the store's block file until the block is
// compacted (seen on disk); an erasure must overwrite them, which only
// a secure message delete does (personal.SubjectKeys.EraseID), and KV
// streams deny every delete. Ensure creates this instead of the bucket;
// it stays a KV bucket to every client.
func (t Topology) SubjectKeysStream() jetstream.StreamConfig {
	b := t.BucketSubjectKeys()
	var kv jetstream.KeyValueConfig
	for _, c := range t.Buckets() {
		if c.Bucket == b {
			kv = c
		}
	}
	return jetstream.StreamConfig{
		Name: "KV_" + b, Description: kv.Description, Subjects: []string{"$KV." + b + ".>"},
		MaxMsgsPerSubject: int64(kv.History), MaxBytes: -1, MaxMsgSize: kv.MaxValueSize, Storage: kv.Storage,
		Replicas: kv.Replicas, AllowRollup: true, DenyDelete: false, Duplicates: 2 * time.Minute,
		MaxMsgs: -1, MaxConsumers: -1, AllowDirect: true, Discard: jetstream.DiscardNew,
	}
}

// MaxSubjectKeyBytes bounds one stored subject key message (a 32-byte
// key; the limit counts the subject and headers too).
const MaxSubjectKeyBytes = 1024

// PolicyActiveKey is the key of the active set in BucketPolicy.
const PolicyActiveKey = "active"

// MaxPolicyBundleBytes bounds a stored policy set (JSON, files base64).
const MaxPolicyBundleBytes = 1 << 20

func (t Topology) name(s string) string { return strings.ToUpper(t.Subjects.Prefix) + "_" + s }

// Streams returns every stream's configuration.
func (t Topology) Streams() []jetstream.StreamConfig {
	s := t.Subjects
	base := func(name, subject string, maxAge time.Duration) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:       name,
			Subjects:   []string{subject},
			Storage:    jetstream.FileStorage,
			Replicas:   t.Replicas,
			Retention:  jetstream.LimitsPolicy,
			MaxAge:     maxAge,
			MaxMsgSize: schemas.MaxMessageBytes,
			Duplicates: t.DuplicateWindow,
			// When full, refuse new messages so the publisher sees an error,
			// rather than silently dropping the oldest unprocessed ones.
			Discard: jetstream.DiscardNew,
		}
	}
	req := base(t.StreamRequests(), s.All(schemas.KindRequest), t.RequestMaxAge)
	// Tenants' requests, whichever tenants there are: adding one changes
	// the accounts, never the stream.
	req.Subjects = append(req.Subjects, s.AllTenantRequests())
	req.Retention = jetstream.WorkQueuePolicy
	req.MaxMsgSize = schemas.MaxRequestBytes
	out := []jetstream.StreamConfig{
		req,
		base(t.StreamVerified(), s.All(schemas.KindVerified), t.EventMaxAge),
		base(t.StreamDecisions(), s.All(schemas.KindDecision), t.EventMaxAge),
		base(t.StreamSessions(), s.All(schemas.KindSession), t.EventMaxAge),
	}
	dlq := base(t.StreamDeadLetter(), s.All(schemas.KindDeadLetter), t.EventMaxAge)
	dlq.MaxMsgSize = schemas.MaxDeadLetterBytes
	out = append(out, dlq)
	gov := base(t.StreamGovernance(), s.All(schemas.KindPolicy), t.EventMaxAge)
	gov.Subjects = append(gov.Subjects, s.All(schemas.KindEntity), s.All(schemas.KindApproval), s.All(schemas.KindPrivacy))
	out = append(out, gov)
	// The checkpoints: never aged out (a checkpoint must outlive the rows
	// it vouches for), the newest CheckpointHistory of each stream kept.
	cps := base(t.StreamAuditCheckpoints(), s.Checkpoints(), 0)
	cps.MaxMsgsPerSubject, cps.MaxMsgSize = CheckpointHistory, MaxCheckpointBytes
	out = append(out, cps)
	// What the audit vouches for is immutable on the bus too: no
	// credential, the provisioner's included, can delete a message from
	// these streams (the checkpoints' included) or purge them (the server
	// refuses; the flags can be set on an existing stream and never
	// cleared).
	for i := range out {
		if out[i].Name != t.StreamRequests() {
			out[i].DenyDelete, out[i].DenyPurge = true, true
		}
	}
	adv := base(t.StreamAdvisories(), "", t.EventMaxAge)
	adv.Subjects = t.advisorySubjects(out)
	return append(out, adv)
}

// advisorySubjects names the advisories of every consumer of the given
// streams, except the dead-letter stream's own (a dead letter is final)
// and the checkpoint stream's (it has no durable consumer).
// Naming each stream keeps two prefixes on one account from overlapping.
func (t Topology) advisorySubjects(streams []jetstream.StreamConfig) []string {
	var subs []string
	for _, st := range streams {
		if st.Name == t.StreamDeadLetter() || st.Name == t.StreamAuditCheckpoints() {
			continue
		}
		subs = append(subs,
			AdvisoryMaxDeliveries+"."+st.Name+".*",
			AdvisoryTerminated+"."+st.Name+".*")
	}
	return subs
}

// Advisory subject prefixes, followed by .<stream>.<consumer>.
const (
	AdvisoryMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
	AdvisoryTerminated    = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"
)

// DeadLetterMaxDeliver bounds the dead-letter worker's attempts at one
// advisory.
const DeadLetterMaxDeliver = 1000

// AuditConsumerPrefix starts the name of every audit consumer.
const AuditConsumerPrefix = "audit-"

// NotAudited names the streams the audit deliberately does not consume, and
// why. Every other stream of Streams is audited: a stream added to the
// topology is audited without anyone remembering to wire it.
func (t Topology) NotAudited() map[string]string {
	return map[string]string{
		t.StreamRequests(): "requests carry the raw bearer token in a header and are consumed by a work queue; " +
			"every request ends in a decision event, which is audited",
		t.StreamVerified(): "a verified request is an internal step; it always ends in a decision event that " +
			"carries the same request, principal and token fingerprint",
		t.StreamAdvisories(): "server advisories are turned into dead-letter events by the audit's dead-letter worker; " +
			"those are audited",
		t.StreamAuditCheckpoints(): "checkpoints are the audit's own signed statements about the other streams' chains " +
			"(auditing them would checkpoint every checkpoint without end); aigov audit verify checks them",
	}
}

// AuditedStreams lists the streams the audit consumes, in topology order.
func (t Topology) AuditedStreams() []string {
	skip := t.NotAudited()
	var out []string
	for _, s := range t.Streams() {
		if _, ok := skip[s.Name]; !ok {
			out = append(out, s.Name)
		}
	}
	return out
}

// AuditConsumer is the name of the audit's durable consumer on stream, e.g.
// audit-decisions on AIGOV_DECISIONS.
func (t Topology) AuditConsumer(stream string) string {
	return AuditConsumerPrefix + strings.ToLower(strings.TrimPrefix(stream, t.name("")))
}

// Buckets returns every KV bucket's configuration.
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		// Per-key TTLs (LimitMarkerTTL) bound each record by its own due
		// time; the bucket TTL stays as the outer bound.
		{Bucket: t.BucketSessions(), Description: "live sessions seen by the reaper", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.EventMaxAge, LimitMarkerTTL: t.MarkerTTL},
		{Bucket: t.BucketLeases(), Description: "live job leases", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.EventMaxAge, LimitMarkerTTL: t.MarkerTTL},
		{Bucket: t.BucketLogoutJTIs(), Description: "jti of accepted back-channel logout tokens, kept until they expire", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.EventMaxAge, LimitMarkerTTL: t.MarkerTTL},
		{Bucket: t.BucketRevocations(), Description: "ended sessions; authn denies their requests", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.RevocationTTL},
		// Per-key TTLs (set to each token's remaining life) keep the bucket
		// as small as the set of live tokens; TTL bounds what is left over.
		{Bucket: t.BucketTokenIDs(), Description: "used token ids (jti); authn denies a replay", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.RevocationTTL, LimitMarkerTTL: TokenIDMarkerTTL},
		{Bucket: t.BucketPolicy(), Description: "the active Cedar policy set; every policy replica watches it", History: 16, Storage: jetstream.FileStorage, Replicas: t.Replicas, MaxValueSize: MaxPolicyBundleBytes},
		{Bucket: t.BucketPolicyProposals(), Description: "pushed policy sets awaiting a policy.update decision", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: 24 * time.Hour, MaxValueSize: MaxPolicyBundleBytes},
		{Bucket: t.BucketEntities(), Description: "the trusted entity store: resources and their attributes", History: 8, Storage: jetstream.FileStorage, Replicas: t.Replicas, MaxValueSize: schemas.MaxEntityBytes},
		// Each approval carries its own TTL; the bucket TTL is the outer bound.
		{Bucket: t.BucketApprovals(), Description: "granted approvals, one per approver and request digest", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: 7 * 24 * time.Hour, LimitMarkerTTL: t.MarkerTTL},
		{Bucket: t.BucketApprovalRequests(), Description: "approval requests and their lifecycle (pending, approved, rejected, expired, used)", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: ApprovalRequestsMaxAge, MaxValueSize: MaxApprovalRequestBytes},
		// History 1 and no TTL: a key lives until its subject is erased,
		// and an erasure (a purge) leaves no earlier revision behind. The
		// replicas hold the same stream and are purged with it.
		{Bucket: t.BucketSubjectKeys(), Description: "per-subject encryption keys; purging one erases that person (crypto-shredding)", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, MaxValueSize: MaxSubjectKeyBytes},
	}
}

// ConsumerSpec is a durable consumer and the stream it reads.
type ConsumerSpec struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// ErrUnknownConsumer is returned for a consumer name the topology lacks.
var ErrUnknownConsumer = errors.New("unknown consumer")

// Consumer returns the spec of a durable consumer.
//
// The audit consumers never give up on a message (MaxDeliver -1): the
// audit log must not lose one to a long ClickHouse outage.
//
// Retries are driven by the runner with NakWithDelay, not by a server-side
// BackOff, because a BackOff replaces AckWait with its first step and the
// audit writer holds messages for a whole flush interval.
func (t Topology) Consumer(name string) (ConsumerSpec, error) {
	s := t.Subjects
	c := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    20,
		MaxAckPending: 1000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	var stream string
	switch name {
	case schemas.ConsumerAuthn:
		stream, c.FilterSubjects = t.StreamRequests(), []string{s.All(schemas.KindRequest), s.AllTenantRequests()}
	case schemas.ConsumerPolicy:
		stream, c.FilterSubject = t.StreamVerified(), s.All(schemas.KindVerified)
	case schemas.ConsumerReaper:
		stream, c.FilterSubject = t.StreamVerified(), s.All(schemas.KindVerified)
	case schemas.ConsumerReaperLeases:
		// Only the decisions that grant or extend a lease: the reaper
		// neither fetches nor acks the rest, two messages fewer per
		// decision on the bus.
		stream, c.FilterSubjects = t.StreamDecisions(), []string{s.Decision(schemas.ActionJobStart), s.Decision(schemas.ActionJobHeartbeat)}
	case schemas.ConsumerDeadLetter:
		// Bounded, unlike the audit's lanes: a dead letter always fits
		// its stream (the body is cut to fit), so only an outage fails
		// it; at the audit's 5 s back-off cap, 1000 deliveries outlast
		// more than an hour of one.
		stream = t.StreamAdvisories()
		c.AckWait, c.MaxDeliver = time.Minute, DeadLetterMaxDeliver
	default:
		// One audit consumer per audited stream (audit-decisions,
		// audit-sessions, audit-dlq, and any stream added later).
		for _, st := range t.Streams() {
			if t.AuditConsumer(st.Name) != name || !slices.Contains(t.AuditedStreams(), st.Name) {
				continue
			}
			stream = st.Name
			if len(st.Subjects) == 1 {
				c.FilterSubject = st.Subjects[0]
			}
			// MaxAckPending holds the writer's two batches in flight at
			// its default batch size of 50,000 (see services/audit).
			c.AckWait, c.MaxAckPending, c.MaxDeliver = time.Minute, 100000, -1
		}
		if stream == "" {
			return ConsumerSpec{}, fmt.Errorf("%w %q", ErrUnknownConsumer, name)
		}
	}
	c.Description = "aigov " + name
	return ConsumerSpec{Stream: stream, Config: c}, nil
}

// ConsumerNames lists every durable consumer of the topology.
func (t Topology) ConsumerNames() []string {
	names := []string{schemas.ConsumerAuthn, schemas.ConsumerPolicy, schemas.ConsumerReaper, schemas.ConsumerReaperLeases, schemas.ConsumerDeadLetter}
	for _, st := range t.AuditedStreams() {
		names = append(names, t.AuditConsumer(st))
	}
	return names
}

// Provision creates or updates every stream, bucket and durable consumer:
// the provisioning step (aigov bus provision) that runs with the
// provisioner's credentials before any service starts. Idempotent; it
// also migrates an existing deployment (e.g. turns on DenyDelete and
// DenyPurge, which the server lets no one turn off again).
func (t Topology) Provision(ctx context.Context, js jetstream.JetStream) error {
	if err := t.Ensure(ctx, js); err != nil {
		return err
	}
	for _, name := range t.ConsumerNames() {
		if _, err := t.EnsureConsumer(ctx, js, name); err != nil {
			return err
		}
	}
	return nil
}

// Bind returns the provisioned durable consumer name; services bind to
// their consumers and never create them (their credentials cannot).
func (t Topology) Bind(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Consumer, error) {
	spec, err := t.Consumer(name)
	if err != nil {
		return nil, err
	}
	c, err := js.Consumer(ctx, spec.Stream, name)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s (has the bus been provisioned? run 'aigov bus provision' as the provisioner): %w", name, spec.Stream, err)
	}
	return c, nil
}

// Ensure creates or updates every stream and bucket.
func (t Topology) Ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, cfg := range t.Streams() {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range t.Buckets() {
		if cfg.Bucket == t.BucketSubjectKeys() {
			// Created, never updated: the provisioner may not update it
			// (Grant), and a stream that exists is left as it is.
			if _, err := js.Stream(ctx, t.SubjectKeysStream().Name); err == nil {
				continue
			} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
				return fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
			}
			if _, err := js.CreateStream(ctx, t.SubjectKeysStream()); err != nil {
				return fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
			}
			continue
		}
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// EnsureConsumer creates or updates the named durable consumer.
func (t Topology) EnsureConsumer(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Consumer, error) {
	spec, err := t.Consumer(name)
	if err != nil {
		return nil, err
	}
	c, err := js.CreateOrUpdateConsumer(ctx, spec.Stream, spec.Config)
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", name, spec.Stream, err)
	}
	return c, nil
}

// Permissions are the subjects one NATS user may publish and subscribe to.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// Grant is what one role needs of the bus, in the topology's own terms. It
// is the one table the NATS permissions of the dev stack, compose and
// Kubernetes are derived from (Permissions).
type Grant struct {
	// Consumers are the durable consumers the role reads: it may fetch
	// from and ack on exactly these, and read their info. It can neither
	// create nor delete any consumer.
	Consumers []string
	// ConsumerInfo are durable consumers whose info (delivery and ack
	// progress, no message) the role may read.
	ConsumerInfo []string
	// Publish are the event subjects the role publishes.
	Publish []string
	// Replies lets the role answer any requester's _INBOX (authn, policy).
	Replies bool
	// ReadKV are the buckets the role reads or watches; WriteKV those it
	// also writes (put, create, delete). No role may purge a bucket's stream.
	ReadKV, WriteKV []string
	// EraseKV are buckets whose messages the role may securely delete
	// (overwritten on disk): the subject keys, for an erasure.
	EraseKV []string
	// ReadStreams are the streams whose messages the role fetches by
	// sequence or subject (stream info and message get only).
	ReadStreams []string
	// Provision lets the role create and update streams, buckets and
	// consumers — never delete or purge them.
	Provision bool
}

// Grant returns the role's grant. Who writes what: only policy writes the
// active policy set and approvals; only the reaper (and the kill switch,
// which runs with the reaper's credentials) writes revocations and
// sessions; only the audit writes checkpoints; the operator stages
// policy sets and entity changes.
func (t Topology) Grant(role string) (Grant, error) {
	s := t.Subjects
	switch role {
	case schemas.RoleAuthn:
		return Grant{
			Consumers: []string{schemas.ConsumerAuthn},
			Publish:   []string{s.All(schemas.KindVerified), s.All(schemas.KindDecision)},
			Replies:   true,
			ReadKV:    []string{t.BucketRevocations()},
			// Subject keys: authn seals personal fields first, so it
			// creates a subject's key (create-if-absent).
			WriteKV: []string{t.BucketTokenIDs(), t.BucketSubjectKeys()},
			// A redelivered request's deny may be a duplicate of one
			// stored before: the reply carries the stored one. A retry
			// reads the verified event stored for its request id first,
			// and the decision stored for it.
			ReadStreams: []string{t.StreamDecisions(), t.StreamVerified()},
		}, nil
	case schemas.RolePolicy:
		return Grant{
			Consumers: []string{schemas.ConsumerPolicy},
			Publish:   []string{s.All(schemas.KindDecision), s.All(schemas.KindPolicy), s.All(schemas.KindEntity), s.All(schemas.KindApproval), s.All(schemas.KindPrivacy)},
			Replies:   true,
			// Revocations: the re-check at decision time. Entities are
			// written only to seed an empty store from policies/.
			// Subject keys: policy opens sealed fields to decide, and purges
			// a subject's key once a privacy.erase is allowed (with its
			// approvals): no human credential can erase anyone.
			ReadKV:  []string{t.BucketPolicyProposals(), t.BucketRevocations()},
			WriteKV: []string{t.BucketPolicy(), t.BucketApprovals(), t.BucketEntities(), t.BucketApprovalRequests(), t.BucketSubjectKeys()},
			EraseKV: []string{t.BucketSubjectKeys()},
			// As authn: a reply to a redelivered request carries the
			// decision stored first, not one decided again.
			ReadStreams: []string{t.StreamDecisions()},
		}, nil
	case schemas.RoleReaper:
		return Grant{
			Consumers:   []string{schemas.ConsumerReaper, schemas.ConsumerReaperLeases},
			Publish:     []string{s.All(schemas.KindSession)},
			WriteKV:     []string{t.BucketSessions(), t.BucketRevocations(), t.BucketLeases(), t.BucketLogoutJTIs()},
			ReadStreams: []string{"KV_" + t.BucketSessions()},
		}, nil
	case schemas.RoleAudit:
		g := Grant{
			Consumers: []string{schemas.ConsumerDeadLetter},
			// Dead letters are published by the audit alone: for its own
			// poison messages and for the other consumers' advisories;
			// checkpoints too. It reads the checkpoint stream (below)
			// and the legacy bucket's, by message.
			Publish:     []string{s.All(schemas.KindDeadLetter), s.Checkpoints()},
			ReadStreams: []string{"KV_" + t.LegacyBucketAuditCheckpoints()},
		}
		for _, st := range t.AuditedStreams() {
			g.Consumers = append(g.Consumers, t.AuditConsumer(st))
		}
		// The dead-letter worker fetches the message an advisory names
		// from whichever stream it is on; a lane re-reads its own stream.
		for _, st := range t.Streams() {
			if st.Name != t.StreamAdvisories() {
				g.ReadStreams = append(g.ReadStreams, st.Name)
			}
		}
		return g, nil
	case schemas.RoleOperator:
		// The operator CLI (aigov policy push, aigov entities, aigov
		// audit verify): it stages policy sets and edits the entity
		// store, reads the active set and the checkpoints, and sends
		// governed requests.
		// It never reaches the subject keys: an export is the governed
		// privacy.export, answered with the key wrapped to the exporter's
		// ephemeral key; erasure is policy's.
		return Grant{
			Publish:     []string{s.All(schemas.KindRequest)},
			ReadKV:      []string{t.BucketPolicy(), t.BucketApprovalRequests()},
			WriteKV:     []string{t.BucketPolicyProposals(), t.BucketEntities()},
			ReadStreams: []string{t.StreamAuditCheckpoints(), "KV_" + t.LegacyBucketAuditCheckpoints()},
		}, nil
	case schemas.RolePlatform:
		// The SDK reads how far authn has acked the request stream to
		// tell a retry of a request still queued (wait for its decision)
		// from one of a request decided already (resend it).
		return Grant{Publish: []string{s.All(schemas.KindRequest)}, ConsumerInfo: []string{schemas.ConsumerAuthn}}, nil
	case schemas.RoleGateway:
		// The gateway decides nothing: it forwards its callers' requests
		// (their own bearer tokens) and reads their decisions on its inbox;
		// its SDK retries as the platform's does.
		return Grant{Publish: []string{s.All(schemas.KindRequest)}, ConsumerInfo: []string{schemas.ConsumerAuthn}}, nil
	case schemas.RoleProvisioner:
		return Grant{Provision: true}, nil
	default:
		return Grant{}, fmt.Errorf("unknown role %q", role)
	}
}

// Permissions returns what a role may do on the bus, derived from its
// Grant: the JetStream API subjects of its own consumers, buckets and
// streams and nothing else, so that no credential but the provisioner's
// can create, delete or purge anything, and none at all can delete or
// purge an audited stream (they deny it themselves).
func (t Topology) Permissions(role string) (Permissions, error) {
	g, err := t.Grant(role)
	if err != nil {
		return Permissions{}, err
	}
	const api = "$JS.API."
	var pub []string
	for _, name := range g.Consumers {
		spec, err := t.Consumer(name)
		if err != nil {
			return Permissions{}, err
		}
		pub = append(pub,
			api+"CONSUMER.INFO."+spec.Stream+"."+name,
			api+"CONSUMER.MSG.NEXT."+spec.Stream+"."+name,
			"$JS.ACK."+spec.Stream+"."+name+".>")
	}
	for _, name := range g.ConsumerInfo {
		spec, err := t.Consumer(name)
		if err != nil {
			return Permissions{}, err
		}
		pub = append(pub, api+"CONSUMER.INFO."+spec.Stream+"."+name)
	}
	read := func(stream string) []string {
		return []string{api + "STREAM.INFO." + stream, api + "STREAM.MSG.GET." + stream,
			api + "DIRECT.GET." + stream, api + "DIRECT.GET." + stream + ".>"}
	}
	for _, st := range g.ReadStreams {
		pub = append(pub, read(st)...)
	}
	kvRead := func(b string) []string {
		// A watch is an ordered, ephemeral consumer on the bucket's
		// stream, deleted when the watch stops.
		return append(read("KV_"+b),
			api+"CONSUMER.CREATE.KV_"+b, api+"CONSUMER.CREATE.KV_"+b+".>", api+"CONSUMER.DELETE.KV_"+b+".>")
	}
	for _, b := range g.ReadKV {
		pub = append(pub, kvRead(b)...)
	}
	for _, b := range g.WriteKV {
		pub = append(pub, kvRead(b)...)
		pub = append(pub, "$KV."+b+".>")
	}
	for _, b := range g.EraseKV {
		pub = append(pub, api+"STREAM.MSG.DELETE.KV_"+b)
	}
	if len(g.ReadKV)+len(g.WriteKV) > 0 {
		// Flow control of KV watchers, which otherwise stall on a large
		// bucket.
		pub = append(pub, "$JS.FC.>")
	}
	if g.Provision {
		for _, op := range []string{"INFO", "STREAM.NAMES", "STREAM.LIST", "STREAM.INFO.>", "CONSUMER.INFO.>", "CONSUMER.NAMES.>", "CONSUMER.LIST.>"} {
			pub = append(pub, api+op)
		}
		// Only the topology's own streams and buckets, by name: with any
		// name it could mirror or source the subject keys into a stream of
		// its own. Consumers only on the streams, never on a bucket; the
		// subject keys' stream is created, never updated (an update could
		// add a RePublish of every key).
		for _, st := range t.Streams() {
			pub = append(pub, api+"STREAM.CREATE."+st.Name, api+"STREAM.UPDATE."+st.Name,
				api+"CONSUMER.CREATE."+st.Name, api+"CONSUMER.CREATE."+st.Name+".>", api+"CONSUMER.DURABLE.CREATE."+st.Name+".>")
		}
		for _, b := range t.Buckets() {
			pub = append(pub, api+"STREAM.CREATE.KV_"+b.Bucket)
			if b.Bucket != t.BucketSubjectKeys() {
				pub = append(pub, api+"STREAM.UPDATE.KV_"+b.Bucket)
			}
		}
	}
	pub = append(pub, g.Publish...)
	if g.Replies {
		// Replies go to the requester's inbox, whoever it is.
		pub = append(pub, "_INBOX.>")
	}
	return Permissions{Publish: pub, Subscribe: []string{schemas.InboxPrefix(role) + ".>"}}, nil
}
