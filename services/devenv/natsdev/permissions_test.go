package natsdev_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// attack is one thing a holder of a role's credentials might try.
type attack struct {
	name string
	// allowed are the roles the server lets do it; every other role is
	// refused.
	allowed []string
	try     func(ctx context.Context, role string, nc *nats.Conn, js jetstream.JetStream) error
	// effect reports, as the admin, whether the last try took effect, so a
	// refusal is shown by the state of the bus and not only by an error.
	effect func(ctx context.Context, role string, js jetstream.JetStream) bool
	// bindsAdmin: the stream's own configuration refuses it, so the
	// unrestricted admin is refused too. skipAdmin: the admin could, and
	// the rest of the table needs what it would destroy.
	bindsAdmin, skipAdmin bool
}

// Every role's stolen credentials are tried against the real server: each
// forbidden operation is refused and leaves no trace on the bus; each
// allowed one works. Deleting or purging an audited stream is refused for
// every role, the provisioner's included, and for the unrestricted admin
// too (the streams deny it themselves).
func TestEveryRoleHasLeastPrivilege(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: tries every operation as every role (about a minute)")
	}
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	topo := topology.New("")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	// One decision in the stream, so that a purge or a delete has
	// something to remove.
	if _, err := ajs.Publish(ctx, "aigov.decision.model.deploy", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// And one checkpoint (on a subject no attack publishes to), at
	// sequence 1 of the checkpoint stream.
	if _, err := ajs.Publish(ctx, topo.Subjects.Checkpoint(topo.StreamSessions()), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	checkpointKept := func(ctx context.Context, _ string, js jetstream.JetStream) bool {
		st, err := js.Stream(ctx, topo.StreamAuditCheckpoints())
		if err != nil {
			return false
		}
		_, err = st.GetMsg(ctx, 1)
		return err == nil
	}
	checkpoints := func(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
		return js.Stream(ctx, topo.StreamAuditCheckpoints())
	}

	kvPut := func(bucket, key string) func(context.Context, string, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
			kv, err := js.KeyValue(ctx, bucket)
			if err != nil {
				return err
			}
			_, err = kv.Put(ctx, key, []byte("forged by "+role))
			return err
		}
	}
	kvHas := func(bucket, key string) func(context.Context, string, jetstream.JetStream) bool {
		return func(ctx context.Context, role string, js jetstream.JetStream) bool {
			kv, err := js.KeyValue(ctx, bucket)
			if err != nil {
				return false
			}
			e, err := kv.Get(ctx, key)
			if err != nil || string(e.Value()) != "forged by "+role {
				return false
			}
			_ = kv.Purge(ctx, key) // reset for the next role
			return true
		}
	}
	publish := func(subject string) func(context.Context, string, *nats.Conn, jetstream.JetStream) error {
		return func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, subject, []byte(`{"forged_by":"`+role+`"}`))
			return err
		}
	}
	lastIs := func(stream, subject string) func(context.Context, string, jetstream.JetStream) bool {
		return func(ctx context.Context, role string, js jetstream.JetStream) bool {
			st, err := js.Stream(ctx, stream)
			if err != nil {
				return false
			}
			m, err := st.GetLastMsgForSubject(ctx, subject)
			return err == nil && string(m.Data) == `{"forged_by":"`+role+`"}`
		}
	}
	decisions := func(ctx context.Context, js jetstream.JetStream) uint64 {
		st, err := js.Stream(ctx, topo.StreamDecisions())
		if err != nil {
			return 0
		}
		return st.CachedInfo().State.Msgs
	}
	before := decisions(ctx, ajs)
	if _, err := ajs.Publish(ctx, "aigov.request.model.deploy", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	// A subject key, for the roles that may read one and the rest that
	// may not (the audit stores ciphertext and needs none).
	const subjectKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	skv, err := ajs.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := skv.Put(ctx, subjectKey, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}

	var requestSeq uint64 // the probe request of "securely delete a queued request"
	attacks := []attack{
		{name: "read a subject key", allowed: []string{schemas.RoleAuthn, schemas.RolePolicy},
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
				if err != nil {
					return err
				}
				_, err = kv.Get(ctx, subjectKey)
				return err
			},
			effect: func(context.Context, string, jetstream.JetStream) bool { return false }},
		// The erasure's secure delete: policy's alone (after an allowed
		// privacy.erase); the operator who reads keys cannot destroy one.
		{name: "securely delete a subject key", allowed: []string{schemas.RolePolicy},
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := js.Stream(ctx, "KV_"+topo.BucketSubjectKeys())
				if err != nil {
					return err
				}
				m, err := st.GetLastMsgForSubject(ctx, "$KV."+topo.BucketSubjectKeys()+"."+subjectKey)
				if err != nil {
					return err
				}
				return st.SecureDeleteMsg(ctx, m.Sequence)
			},
			effect: func(ctx context.Context, _ string, js jetstream.JetStream) bool {
				kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
				if err != nil {
					return false
				}
				if _, err := kv.Get(ctx, subjectKey); err == nil {
					return false
				}
				_, _ = kv.Put(ctx, subjectKey, make([]byte, 32)) // reset for the next role
				return true
			}},
		// Deleting a queued request would lose it without a trace (no
		// dead letter, no decision): no role may, not even the audit,
		// which reads the queue to dead-letter what authn gave up on.
		{name: "securely delete a queued request", allowed: nil,
			try: func(ctx context.Context, _ string, nc *nats.Conn, _ jetstream.JetStream) error {
				ack, err := ajs.Publish(ctx, "aigov.request.privacy.probe", []byte(`{}`))
				if err != nil {
					return err
				}
				requestSeq = ack.Sequence
				resp, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.DELETE."+topo.StreamRequests(), []byte(fmt.Sprintf(`{"seq":%d}`, ack.Sequence)))
				if err != nil {
					return err
				}
				if !bytes.Contains(resp.Data, []byte(`"success":true`)) {
					return fmt.Errorf("delete refused: %s", resp.Data)
				}
				return nil
			},
			effect: func(ctx context.Context, _ string, js jetstream.JetStream) bool {
				st, err := js.Stream(ctx, topo.StreamRequests())
				if err != nil {
					return false
				}
				_, err = st.GetMsg(ctx, requestSeq)
				return errors.Is(err, jetstream.ErrMsgNotFound)
			}},
		{name: "write a subject key", allowed: []string{schemas.RoleAuthn, schemas.RolePolicy},
			try:    kvPut(topo.BucketSubjectKeys(), "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
			effect: kvHas(topo.BucketSubjectKeys(), "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210")},
		{name: "overwrite the active policy set", allowed: []string{schemas.RolePolicy},
			try: kvPut(topo.BucketPolicy(), topology.PolicyActiveKey), effect: kvHas(topo.BucketPolicy(), topology.PolicyActiveKey)},
		{name: "forge an approval", allowed: []string{schemas.RolePolicy},
			try: kvPut(topo.BucketApprovals(), "digest.risk"), effect: kvHas(topo.BucketApprovals(), "digest.risk")},
		{name: "write a revocation", allowed: []string{schemas.RoleReaper},
			try: kvPut(topo.BucketRevocations(), "s1"), effect: kvHas(topo.BucketRevocations(), "s1")},
		// Checkpoints: only the audit writes them; the audit and the
		// operator (aigov audit verify) read them; nobody, the admin
		// included, deletes one, purges them or unlocks the stream.
		{name: "publish an audit checkpoint", allowed: []string{schemas.RoleAudit},
			try:    publish(topo.Subjects.Checkpoint(topo.StreamDecisions())),
			effect: lastIs(topo.StreamAuditCheckpoints(), topo.Subjects.Checkpoint(topo.StreamDecisions()))},
		{name: "read the audit checkpoints", allowed: []string{schemas.RoleAudit, schemas.RoleOperator},
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := checkpoints(ctx, js)
				if err != nil {
					return err
				}
				if _, err := st.GetLastMsgForSubject(ctx, topo.Subjects.Checkpoint(topo.StreamSessions())); err != nil {
					return err
				}
				_, err = st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(topo.Subjects.Checkpoint(topo.StreamSessions())))
				return err
			},
			effect: func(context.Context, string, jetstream.JetStream) bool { return false }},
		{name: "delete an audit checkpoint", allowed: nil, bindsAdmin: true,
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := checkpoints(ctx, js)
				if err != nil {
					return err
				}
				return st.DeleteMsg(ctx, 1)
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				return !checkpointKept(ctx, role, js)
			}},
		{name: "purge the audit checkpoints", allowed: nil, bindsAdmin: true,
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := checkpoints(ctx, js)
				if err != nil {
					return err
				}
				return st.Purge(ctx, jetstream.WithPurgeSubject(topo.Subjects.Checkpoint(topo.StreamSessions())))
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				return !checkpointKept(ctx, role, js)
			}},
		{name: "turn off deny delete on the audit checkpoints", allowed: nil, bindsAdmin: true,
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				for _, cfg := range topo.Streams() {
					if cfg.Name == topo.StreamAuditCheckpoints() {
						cfg.DenyDelete, cfg.DenyPurge = false, false
						_, err := js.UpdateStream(ctx, cfg)
						return err
					}
				}
				return errors.New("no checkpoint stream in the topology")
			},
			effect: func(ctx context.Context, _ string, js jetstream.JetStream) bool {
				st, err := js.Stream(ctx, topo.StreamAuditCheckpoints())
				return err == nil && (!st.CachedInfo().Config.DenyDelete || !st.CachedInfo().Config.DenyPurge)
			}},
		{name: "delete the audit checkpoint stream", allowed: nil, skipAdmin: true,
			try: func(ctx context.Context, _ string, _ *nats.Conn, js jetstream.JetStream) error {
				return js.DeleteStream(ctx, topo.StreamAuditCheckpoints())
			},
			effect: func(ctx context.Context, _ string, js jetstream.JetStream) bool {
				_, err := js.Stream(ctx, topo.StreamAuditCheckpoints())
				return errors.Is(err, jetstream.ErrStreamNotFound)
			}},
		{name: "stage a policy set", allowed: []string{schemas.RoleOperator},
			try: kvPut(topo.BucketPolicyProposals(), "abc"), effect: kvHas(topo.BucketPolicyProposals(), "abc")},
		{name: "forge a decision", allowed: []string{schemas.RoleAuthn, schemas.RolePolicy},
			try: publish("aigov.decision.model.deploy"), effect: lastIs(topo.StreamDecisions(), "aigov.decision.model.deploy")},
		{name: "forge a verified event", allowed: []string{schemas.RoleAuthn},
			try: publish("aigov.verified.model.deploy"), effect: lastIs(topo.StreamVerified(), "aigov.verified.model.deploy")},
		{name: "forge a session event", allowed: []string{schemas.RoleReaper},
			try: publish("aigov.session.revoked"), effect: lastIs(topo.StreamSessions(), "aigov.session.revoked")},
		{name: "forge a policy change", allowed: []string{schemas.RolePolicy},
			try: publish("aigov.policy.changed"), effect: lastIs(topo.StreamGovernance(), "aigov.policy.changed")},
		{name: "publish a request", allowed: []string{schemas.RolePlatform, schemas.RoleGateway, schemas.RoleOperator},
			try: publish("aigov.request.model.deploy"), effect: lastIs(topo.StreamRequests(), "aigov.request.model.deploy")},
		{name: "purge the decisions stream", allowed: nil, bindsAdmin: true,
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := js.Stream(ctx, topo.StreamDecisions())
				if err != nil {
					return err
				}
				return st.Purge(ctx)
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				return decisions(ctx, js) < before
			}},
		{name: "delete a decision", allowed: nil, bindsAdmin: true,
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				st, err := js.Stream(ctx, topo.StreamDecisions())
				if err != nil {
					return err
				}
				return st.DeleteMsg(ctx, 1)
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				return decisions(ctx, js) < before
			}},
		{name: "delete the decisions stream", allowed: nil, skipAdmin: true,
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				return js.DeleteStream(ctx, topo.StreamDecisions())
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				_, err := js.Stream(ctx, topo.StreamDecisions())
				return errors.Is(err, jetstream.ErrStreamNotFound)
			}},
		// The roles that read keys watch the bucket, a consumer of its
		// stream; no other, the provisioner included, may make one.
		{name: "create a consumer on the subject keys", allowed: []string{schemas.RoleAuthn, schemas.RolePolicy},
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				_, err := js.CreateOrUpdateConsumer(ctx, "KV_"+topo.BucketSubjectKeys(), jetstream.ConsumerConfig{Durable: "key-thief", AckPolicy: jetstream.AckExplicitPolicy})
				return err
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				if _, err := js.Consumer(ctx, "KV_"+topo.BucketSubjectKeys(), "key-thief"); err != nil {
					return false
				}
				_ = js.DeleteConsumer(ctx, "KV_"+topo.BucketSubjectKeys(), "key-thief")
				return true
			}},
		{name: "mirror the subject keys into a stream of one's own", allowed: nil,
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "KEY_THIEF", Mirror: &jetstream.StreamSource{Name: "KV_" + topo.BucketSubjectKeys()}})
				return err
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				if _, err := js.Stream(ctx, "KEY_THIEF"); err != nil {
					return false
				}
				_ = js.DeleteStream(ctx, "KEY_THIEF")
				return true
			}},
		{name: "republish every subject key", allowed: nil,
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				cfg := topo.SubjectKeysStream()
				cfg.RePublish = &jetstream.RePublish{Source: ">", Destination: "_INBOX." + role + ".keys.>"}
				_, err := js.UpdateStream(ctx, cfg)
				return err
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				st, err := js.Stream(ctx, "KV_"+topo.BucketSubjectKeys())
				if err != nil || st.CachedInfo().Config.RePublish == nil {
					return false
				}
				cfg := topo.SubjectKeysStream()
				_, _ = js.UpdateStream(ctx, cfg)
				return true
			}},
		{name: "create a consumer on the decisions stream", allowed: []string{schemas.RoleProvisioner},
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				_, err := js.CreateOrUpdateConsumer(ctx, topo.StreamDecisions(), jetstream.ConsumerConfig{Durable: "thief", AckPolicy: jetstream.AckExplicitPolicy})
				return err
			},
			effect: func(ctx context.Context, role string, js jetstream.JetStream) bool {
				if _, err := js.Consumer(ctx, topo.StreamDecisions(), "thief"); err != nil {
					return false
				}
				_ = js.DeleteConsumer(ctx, topo.StreamDecisions(), "thief")
				return true
			}},
		{name: "fetch from authn's consumer", allowed: []string{schemas.RoleAuthn},
			try: func(ctx context.Context, role string, _ *nats.Conn, js jetstream.JetStream) error {
				c, err := js.Consumer(ctx, topo.StreamRequests(), schemas.ConsumerAuthn)
				if err != nil {
					return err
				}
				// A refused pull request is dropped by the server: the
				// batch just ends empty. A request is always waiting.
				batch, err := c.Fetch(1, jetstream.FetchMaxWait(300*time.Millisecond))
				if err != nil {
					return err
				}
				n := 0
				for m := range batch.Messages() {
					n++
					_ = m.Nak()
				}
				if n == 0 {
					return errors.New("no message fetched")
				}
				return batch.Error()
			},
			effect: func(context.Context, string, jetstream.JetStream) bool { return false }},
		{name: "read another role's inbox", allowed: []string{schemas.RolePlatform},
			try: func(_ context.Context, _ string, nc *nats.Conn, _ jetstream.JetStream) error {
				sub, err := nc.SubscribeSync("_INBOX.platform.>")
				if err != nil {
					return err
				}
				defer func() { _ = sub.Unsubscribe() }()
				if err := nc.Flush(); err != nil {
					return err
				}
				return nc.LastError()
			},
			effect: func(context.Context, string, jetstream.JetStream) bool { return false }},
	}

	for _, role := range append(schemas.Roles(), natsdev.AdminUser) {
		for _, a := range attacks {
			want := slices.Contains(a.allowed, role)
			if role == natsdev.AdminUser {
				// The admin is unrestricted by permissions (a dev-only
				// user no service holds); only the streams' own flags
				// bind it.
				want = !a.bindsAdmin
				if a.skipAdmin {
					continue
				}
			}
			t.Run(role+"/"+a.name, func(t *testing.T) {
				nc, err := srv.Connect(role, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				js, _ := jetstream.New(nc)
				// A refused publish is dropped by the server, and the
				// JetStream request behind it then times out: 500 ms.
				actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
				err = a.try(actx, role, nc, js)
				acancel()
				took := a.effect(ctx, role, ajs)
				switch {
				case want && err != nil:
					t.Errorf("%s may %s, but it failed: %v", role, a.name, err)
				case !want && err == nil:
					t.Errorf("%s may not %s, but the server accepted it", role, a.name)
				case !want && took:
					t.Errorf("%s may not %s, but it took effect", role, a.name)
				}
			})
		}
	}
}
