package topology_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/topology"
)

func TestTopologyNames(t *testing.T) {
	t.Parallel()
	topo := topology.New("acme")
	got := []string{topo.StreamRequests(), topo.StreamVerified(), topo.StreamDecisions(), topo.StreamSessions(), topo.BucketSessions(), topo.BucketRevocations()}
	want := []string{"ACME_REQUESTS", "ACME_VERIFIED", "ACME_DECISIONS", "ACME_SESSIONS", "acme_sessions", "acme_revocations"}
	if !slices.Equal(got, want) {
		t.Errorf("names = %v, want %v", got, want)
	}
	streams := topo.Streams()
	// requests, verified, decisions, sessions, dead letters, advisories,
	// governance, audit checkpoints.
	if len(streams) != 8 {
		t.Fatalf("%d streams, want 8", len(streams))
	}
	for _, s := range streams {
		wantRetention, wantSize, wantImmutable := jetstream.LimitsPolicy, int32(schemas.MaxMessageBytes), true
		switch s.Name {
		case topo.StreamRequests():
			wantRetention, wantSize, wantImmutable = jetstream.WorkQueuePolicy, schemas.MaxRequestBytes, false
		case topo.StreamDeadLetter():
			wantSize = schemas.MaxDeadLetterBytes
		case topo.StreamAdvisories():
			wantImmutable = false
		case topo.StreamAuditCheckpoints():
			wantSize = topology.MaxCheckpointBytes
			// Never aged out; the last CheckpointHistory of each stream
			// kept; no rollup (a rollup would be a purge).
			if s.Name != "ACME_AUDIT_CHECKPOINTS" || !slices.Equal(s.Subjects, []string{"acme.audit.checkpoints.>"}) || s.MaxAge != 0 ||
				s.MaxMsgsPerSubject != topology.CheckpointHistory || s.AllowRollup || s.Storage != jetstream.FileStorage || s.Replicas != topo.Replicas {
				t.Errorf("checkpoint stream: %+v", s)
			}
		}
		if s.DenyDelete != wantImmutable || s.DenyPurge != wantImmutable {
			t.Errorf("stream %s: deny delete %v, deny purge %v, want %v", s.Name, s.DenyDelete, s.DenyPurge, wantImmutable)
		}
		if wantSize > schemas.MaxPayloadBytes {
			t.Errorf("stream %s takes %d bytes, more than the server's max payload", s.Name, wantSize)
		}
		if s.Retention != wantRetention || s.Discard != jetstream.DiscardNew || s.MaxMsgSize != wantSize || s.Duplicates != topo.DuplicateWindow {
			t.Errorf("stream %s: %+v", s.Name, s)
		}
	}
}

func TestTopologyConsumer(t *testing.T) {
	t.Parallel()
	topo := topology.New("")
	streamSubjects := map[string][]string{}
	for _, s := range topo.Streams() {
		streamSubjects[s.Name] = s.Subjects
	}
	cases := []struct {
		name       string
		stream     string
		filter     string
		maxDeliver int
	}{
		{schemas.ConsumerAuthn, "AIGOV_REQUESTS", "aigov.request.> aigov.tenant.*.request.>", 20},
		{schemas.ConsumerPolicy, "AIGOV_VERIFIED", "aigov.verified.>", 20},
		{schemas.ConsumerReaper, "AIGOV_VERIFIED", "aigov.verified.>", 20},
		// Leases come only from job decisions; the reaper sees no other.
		{schemas.ConsumerReaperLeases, "AIGOV_DECISIONS", "aigov.decision.job.start aigov.decision.job.heartbeat", 20},
		// The audit log must not lose an event to a long outage.
		{schemas.ConsumerAuditDecisions, "AIGOV_DECISIONS", "aigov.decision.>", -1},
		{schemas.ConsumerAuditSessions, "AIGOV_SESSIONS", "aigov.session.>", -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec, err := topo.Consumer(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			c := spec.Config
			filters := c.FilterSubjects
			if c.FilterSubject != "" {
				filters = append(filters, c.FilterSubject)
			}
			if spec.Stream != tc.stream || strings.Join(filters, " ") != tc.filter || c.Durable != tc.name {
				t.Errorf("spec = %s %q durable %q; want %s %q durable %q", spec.Stream, filters, c.Durable, tc.stream, tc.filter, tc.name)
			}
			for _, f := range filters {
				if !slices.ContainsFunc(streamSubjects[spec.Stream], func(sub string) bool { return server.SubjectMatchesFilter(f, sub) }) {
					t.Errorf("filter %s is outside stream %s (%s)", f, spec.Stream, streamSubjects[spec.Stream])
				}
			}
			if c.AckPolicy != jetstream.AckExplicitPolicy || c.MaxDeliver != tc.maxDeliver || c.AckWait <= 0 || c.MaxAckPending <= 0 || len(c.BackOff) != 0 {
				t.Errorf("delivery settings %+v", c)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		t.Parallel()
		if _, err := topo.Consumer("billing"); !errors.Is(err, topology.ErrUnknownConsumer) {
			t.Fatalf("Consumer(billing) error = %v, want ErrUnknownConsumer", err)
		}
	})
}

func allowed(list []string, subject string) bool {
	for _, f := range list {
		if server.SubjectMatchesFilter(subject, f) {
			return true
		}
	}
	return false
}

func TestTopologyPermissions(t *testing.T) {
	t.Parallel()
	topo := topology.New("")
	const (
		request        = "aigov.request.model.deploy"
		verified       = "aigov.verified.model.deploy"
		decision       = "aigov.decision.model.deploy"
		session        = "aigov.session.expired"
		jsAPI          = "$JS.API.CONSUMER.MSG.NEXT.AIGOV_REQUESTS.authn"
		kvPut          = "$KV.aigov_revocations.abc"
		platformInbox  = "_INBOX.platform.x.y"
		activePolicy   = "$KV.aigov_policy.active"
		approval       = "$KV.aigov_approvals.abc"
		checkpoint     = "aigov.audit.checkpoints.AIGOV_DECISIONS"
		readCheckpoint = "$JS.API.STREAM.MSG.GET.AIGOV_AUDIT_CHECKPOINTS"
		delCheckpoint  = "$JS.API.STREAM.MSG.DELETE.AIGOV_AUDIT_CHECKPOINTS"
		purgeCheckpts  = "$JS.API.STREAM.PURGE.AIGOV_AUDIT_CHECKPOINTS"
		legacyKVPut    = "$KV.aigov_audit_checkpoints.AIGOV_DECISIONS"
		purgeDecisions = "$JS.API.STREAM.PURGE.AIGOV_DECISIONS"
		createConsumer = "$JS.API.CONSUMER.CREATE.AIGOV_DECISIONS.x"
	)
	cases := []struct {
		role       string
		pub, noPub []string
		sub, noSub []string
	}{
		// Least privilege: each service fetches and acks only on its own
		// consumers and writes only the buckets its job needs.
		{schemas.RoleAuthn,
			[]string{verified, decision, platformInbox, jsAPI, "$KV.aigov_token_ids.abc", "$JS.ACK.AIGOV_REQUESTS.authn.1.1.1.1.0",
				"$JS.API.DIRECT.GET.KV_aigov_revocations.$KV.aigov_revocations.abc"},
			[]string{request, session, kvPut, activePolicy, approval, purgeDecisions, createConsumer, "$JS.API.CONSUMER.MSG.NEXT.AIGOV_VERIFIED.policy",
				checkpoint, readCheckpoint, delCheckpoint, purgeCheckpts, legacyKVPut},
			[]string{"_INBOX.authn.x"}, []string{"_INBOX.platform.x", request, decision}},
		{schemas.RolePolicy,
			[]string{decision, platformInbox, "$JS.API.CONSUMER.MSG.NEXT.AIGOV_VERIFIED.policy", activePolicy, approval,
				"aigov.policy.changed", "aigov.entity.changed", "aigov.approval.used", "$JS.API.STREAM.INFO.KV_aigov_revocations"},
			[]string{request, verified, session, jsAPI, kvPut, purgeDecisions, createConsumer, "$KV.aigov_policy_proposals.abc",
				checkpoint, readCheckpoint, delCheckpoint, purgeCheckpts, legacyKVPut},
			[]string{"_INBOX.policy.x"}, []string{"_INBOX.authn.x", decision}},
		{schemas.RoleReaper,
			[]string{session, kvPut, "$JS.API.CONSUMER.MSG.NEXT.AIGOV_VERIFIED.reaper", "$JS.API.CONSUMER.MSG.NEXT.AIGOV_DECISIONS.reaper-leases"},
			[]string{request, verified, decision, platformInbox, jsAPI, activePolicy, approval, purgeDecisions, createConsumer, checkpoint,
				readCheckpoint, delCheckpoint, purgeCheckpts, legacyKVPut},
			[]string{"_INBOX.reaper.x"}, []string{"_INBOX.platform.x"}},
		{schemas.RoleAudit,
			[]string{checkpoint, readCheckpoint, "$JS.API.STREAM.INFO.AIGOV_AUDIT_CHECKPOINTS", "$JS.API.STREAM.MSG.GET.KV_aigov_audit_checkpoints",
				"$JS.API.CONSUMER.MSG.NEXT.AIGOV_DECISIONS.audit-decisions", "$JS.API.STREAM.MSG.GET.AIGOV_DECISIONS", "aigov.dlq.x"},
			[]string{request, verified, decision, session, platformInbox, jsAPI, kvPut, activePolicy, approval, purgeDecisions, createConsumer,
				delCheckpoint, purgeCheckpts, legacyKVPut, "$JS.API.STREAM.DELETE.AIGOV_AUDIT_CHECKPOINTS", "$JS.API.CONSUMER.CREATE.AIGOV_AUDIT_CHECKPOINTS"},
			[]string{"_INBOX.audit.x"}, []string{"_INBOX.platform.x", decision}},
		// The operator stages policy sets and edits entities through those
		// buckets' KV API only, and sends governed requests.
		{schemas.RoleOperator,
			[]string{request, "$KV.aigov_entities.Model.x", "$KV.aigov_policy_proposals.abc", "$JS.API.STREAM.INFO.KV_aigov_policy",
				readCheckpoint, "$JS.API.STREAM.INFO.AIGOV_AUDIT_CHECKPOINTS"},
			[]string{verified, decision, session, jsAPI, kvPut, activePolicy, approval, "aigov.policy.changed", platformInbox, purgeDecisions, createConsumer,
				checkpoint, delCheckpoint, purgeCheckpts, legacyKVPut},
			[]string{"_INBOX.operator.x"}, []string{platformInbox, decision}},
		// The platform publishes requests and reads its own inbox, nothing
		// else: it can never forge a decision or touch the JetStream API.
		{schemas.RolePlatform,
			[]string{request, "aigov.request.dataset.promote"},
			[]string{verified, decision, session, jsAPI, kvPut, platformInbox, "_INBOX.authn.x", purgeDecisions, checkpoint, readCheckpoint},
			[]string{platformInbox}, []string{"_INBOX.authn.x", decision, request, ">"}},
		// The gateway, like a platform, publishes requests and reads its
		// own inbox only; it can forge no decision nor read a platform's.
		{schemas.RoleGateway,
			[]string{request, "aigov.request.agent.tool_call"},
			[]string{verified, decision, session, jsAPI, kvPut, platformInbox, "_INBOX.authn.x", purgeDecisions, checkpoint, readCheckpoint, activePolicy, approval, createConsumer},
			[]string{"_INBOX.gateway.x"}, []string{platformInbox, "_INBOX.authn.x", decision, request, ">"}},
		// The provisioner creates and updates; it deletes and purges nothing
		// and publishes no event.
		{schemas.RoleProvisioner,
			[]string{createConsumer, "$JS.API.STREAM.CREATE.AIGOV_DECISIONS", "$JS.API.STREAM.UPDATE.AIGOV_DECISIONS", "$JS.API.STREAM.CREATE.KV_aigov_policy"},
			[]string{purgeDecisions, "$JS.API.STREAM.DELETE.AIGOV_DECISIONS", "$JS.API.STREAM.MSG.DELETE.AIGOV_DECISIONS", "$JS.API.CONSUMER.DELETE.AIGOV_REQUESTS.authn",
				request, decision, activePolicy, approval, kvPut, jsAPI, checkpoint, delCheckpoint, purgeCheckpts, legacyKVPut},
			[]string{"_INBOX.provisioner.x"}, []string{platformInbox}},
	}
	var roles []string
	for _, tc := range cases {
		roles = append(roles, tc.role)
		t.Run(tc.role, func(t *testing.T) {
			t.Parallel()
			p, err := topo.Permissions(tc.role)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.pub {
				if !allowed(p.Publish, s) {
					t.Errorf("may not publish %s; publish = %v", s, p.Publish)
				}
			}
			for _, s := range tc.noPub {
				if allowed(p.Publish, s) {
					t.Errorf("may publish %s; publish = %v", s, p.Publish)
				}
			}
			for _, s := range tc.sub {
				if !allowed(p.Subscribe, s) {
					t.Errorf("may not subscribe %s; subscribe = %v", s, p.Subscribe)
				}
			}
			for _, s := range tc.noSub {
				if allowed(p.Subscribe, s) {
					t.Errorf("may subscribe %s; subscribe = %v", s, p.Subscribe)
				}
			}
		})
	}
	if !slices.Equal(slices.Sorted(slices.Values(roles)), slices.Sorted(slices.Values(schemas.Roles()))) {
		t.Errorf("Roles() = %v, tested %v", schemas.Roles(), roles)
	}
	if _, err := topo.Permissions("admin"); err == nil {
		t.Error("Permissions(admin) succeeded; unknown roles must get nothing")
	}
	if got := schemas.InboxPrefix("platform"); got != "_INBOX.platform" {
		t.Errorf("InboxPrefix = %s", got)
	}
}

// Ensure is idempotent and every consumer can be created on the stream its
// spec names, on a real JetStream server.
func TestTopologyEnsure(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	topo := topology.New("")
	for range 2 {
		if err := topo.Ensure(ctx, js); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{schemas.ConsumerAuthn, schemas.ConsumerPolicy, schemas.ConsumerReaper, schemas.ConsumerAuditDecisions, schemas.ConsumerAuditSessions} {
		c, err := topo.EnsureConsumer(ctx, js, name)
		if err != nil {
			t.Fatal(err)
		}
		spec, _ := topo.Consumer(name)
		if info := c.CachedInfo(); info.Stream != spec.Stream || info.Config.FilterSubject != spec.Config.FilterSubject || !slices.Equal(info.Config.FilterSubjects, spec.Config.FilterSubjects) {
			t.Errorf("consumer %s created as %s %s %q", name, info.Stream, info.Config.FilterSubject, info.Config.FilterSubjects)
		}
	}
	if _, err := topo.EnsureConsumer(ctx, js, "billing"); !errors.Is(err, topology.ErrUnknownConsumer) {
		t.Errorf("EnsureConsumer(billing) = %v, want ErrUnknownConsumer", err)
	}
	for _, b := range topo.Buckets() {
		if _, err := js.KeyValue(ctx, b.Bucket); err != nil {
			t.Errorf("bucket %s: %v", b.Bucket, err)
		}
	}
}
