package schemas

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Durable consumer names. Replicas of a service share their consumer, which
// is how every service scales out.
const (
	ConsumerAuthn          = "authn"
	ConsumerPolicy         = "policy"
	ConsumerReaper         = "reaper"
	ConsumerAuditDecisions = "audit-decisions"
	ConsumerAuditSessions  = "audit-sessions"
)

// Roles are the NATS identities of the dev stack, one per service plus the
// ML platform that publishes requests.
const (
	RoleAuthn    = "authn"
	RolePolicy   = "policy"
	RoleAudit    = "audit"
	RoleReaper   = "reaper"
	RolePlatform = "platform"
)

// Topology is the whole JetStream layout: streams, KV buckets and durable
// consumers. Every service ensures it at start; creation is idempotent, so
// the order in which services start does not matter.
type Topology struct {
	Subjects Subjects
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
}

// NewTopology returns the default topology under prefix.
func NewTopology(prefix string) Topology {
	return Topology{
		Subjects:        NewSubjects(prefix),
		Replicas:        1,
		DuplicateWindow: 2 * time.Minute,
		RequestMaxAge:   24 * time.Hour,
		EventMaxAge:     7 * 24 * time.Hour,
		RevocationTTL:   7 * 24 * time.Hour,
	}
}

// Stream names.
func (t Topology) StreamRequests() string  { return t.name("REQUESTS") }
func (t Topology) StreamVerified() string  { return t.name("VERIFIED") }
func (t Topology) StreamDecisions() string { return t.name("DECISIONS") }
func (t Topology) StreamSessions() string  { return t.name("SESSIONS") }

// Bucket names.
func (t Topology) BucketSessions() string    { return strings.ToLower(t.name("sessions")) }
func (t Topology) BucketRevocations() string { return strings.ToLower(t.name("revocations")) }

func (t Topology) name(s string) string { return strings.ToUpper(t.Subjects.Prefix) + "_" + s }

// MaxMessageBytes bounds one message on any aigov stream: a token, a context
// of MaxContextBytes and the envelope fit with room to spare.
const MaxMessageBytes = 64 << 10

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
			MaxMsgSize: MaxMessageBytes,
			Duplicates: t.DuplicateWindow,
			// When full, refuse new messages so the publisher sees an error,
			// rather than silently dropping the oldest unprocessed ones.
			Discard: jetstream.DiscardNew,
		}
	}
	req := base(t.StreamRequests(), s.All(KindRequest), t.RequestMaxAge)
	req.Retention = jetstream.WorkQueuePolicy
	return []jetstream.StreamConfig{
		req,
		base(t.StreamVerified(), s.All(KindVerified), t.EventMaxAge),
		base(t.StreamDecisions(), s.All(KindDecision), t.EventMaxAge),
		base(t.StreamSessions(), s.All(KindSession), t.EventMaxAge),
	}
}

// Buckets returns every KV bucket's configuration.
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{Bucket: t.BucketSessions(), Description: "live sessions seen by the reaper", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.EventMaxAge},
		{Bucket: t.BucketRevocations(), Description: "ended sessions; authn denies their requests", History: 1, Storage: jetstream.FileStorage, Replicas: t.Replicas, TTL: t.RevocationTTL},
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
	case ConsumerAuthn:
		stream, c.FilterSubject = t.StreamRequests(), s.All(KindRequest)
	case ConsumerPolicy:
		stream, c.FilterSubject = t.StreamVerified(), s.All(KindVerified)
	case ConsumerReaper:
		stream, c.FilterSubject = t.StreamVerified(), s.All(KindVerified)
	case ConsumerAuditDecisions:
		stream, c.FilterSubject = t.StreamDecisions(), s.All(KindDecision)
		c.AckWait, c.MaxAckPending, c.MaxDeliver = time.Minute, 20000, -1
	case ConsumerAuditSessions:
		stream, c.FilterSubject = t.StreamSessions(), s.All(KindSession)
		c.AckWait, c.MaxAckPending, c.MaxDeliver = time.Minute, 20000, -1
	default:
		return ConsumerSpec{}, fmt.Errorf("%w %q", ErrUnknownConsumer, name)
	}
	c.Description = "aigov " + name
	return ConsumerSpec{Stream: stream, Config: c}, nil
}

// Ensure creates or updates every stream and bucket. Safe to call from every
// replica of every service at once.
func (t Topology) Ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, cfg := range t.Streams() {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range t.Buckets() {
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

// InboxPrefix is the custom inbox prefix of a role's connection. Giving each
// user its own inbox lets the server stop one user reading another's replies.
func InboxPrefix(role string) string { return "_INBOX." + role }

// Permissions returns what a role may do on the bus. Services get the
// JetStream API for their consumers and KV; the platform may only publish
// requests and read its own inbox, so it can never forge a decision.
func (t Topology) Permissions(role string) (Permissions, error) {
	s := t.Subjects
	inbox := InboxPrefix(role) + ".>"
	service := func(publish ...string) Permissions {
		return Permissions{
			Publish:   append([]string{"$JS.API.>", "$JS.ACK.>", "$KV.>"}, publish...),
			Subscribe: []string{inbox},
		}
	}
	switch role {
	case RoleAuthn:
		// Replies go to the requester's inbox, whoever it is.
		return service(s.All(KindVerified), s.All(KindDecision), "_INBOX.>"), nil
	case RolePolicy:
		return service(s.All(KindDecision), "_INBOX.>"), nil
	case RoleReaper:
		return service(s.All(KindSession)), nil
	case RoleAudit:
		return service(), nil
	case RolePlatform:
		return Permissions{Publish: []string{s.All(KindRequest)}, Subscribe: []string{inbox}}, nil
	default:
		return Permissions{}, fmt.Errorf("unknown role %q", role)
	}
}

// Roles lists every role of the bus.
func Roles() []string {
	return []string{RoleAuthn, RolePolicy, RoleReaper, RoleAudit, RolePlatform}
}
