package sink

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/internal/chtest"
	"github.com/aigov/aigov/services/audit/privacy"
	"github.com/aigov/aigov/services/devenv/clickhouse"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// server is the package's one ClickHouse process; each test has its own
// database on it.
var server *clickhouse.Server

func TestMain(m *testing.M) { os.Exit(chtest.Main(m, &server)) }

// harness is a running audit service: an embedded NATS server, the service
// connected as the audit role user, and its own database.
type harness struct {
	t        *testing.T
	subjects schemas.Subjects
	topo     topology.Topology
	db       string
	ch       driver.Conn // reads the audit database
	admin    jetstream.JetStream
	svc      *servicekit.Service
	stop     func() // shuts the service down and waits for it
	ns       *natsdev.Server
	keyFile  string
	// pseud derives pseudonyms under the service's pseudonym key.
	pseud privacy.Pseudonymizer
	// keys sign what the harness publishes as the services would.
	keys *devkeys.Set
}

type harnessOptions struct {
	batchSize     int
	flushInterval time.Duration
	maskFields    string
	// personalFields is AIGOV_PERSONAL_CONTEXT_FIELDS.
	personalFields string
	// keyFile is the signing key; a new one in a temp dir when empty.
	keyFile string
	// pseudonymKey is the pseudonym key file; pseudonym.key next to
	// keyFile (created) when empty.
	pseudonymKey string
	// ns reuses a NATS server (a restarted service); a new one when nil.
	ns *natsdev.Server
	// db reuses a database; a new one when empty.
	db string
	// secureCH writes over ClickHouse's secure native port, verifying it
	// against the dev CA.
	secureCH bool
}

func startHarness(t *testing.T, o harnessOptions) *harness {
	t.Helper()
	if o.batchSize == 0 {
		o.batchSize = 5000
	}
	if o.flushInterval == 0 {
		o.flushInterval = 100 * time.Millisecond
	}
	if o.keyFile == "" {
		o.keyFile = t.TempDir() + "/audit-signing.key"
	}
	if o.pseudonymKey == "" {
		o.pseudonymKey = filepath.Join(filepath.Dir(o.keyFile), "pseudonym.key")
	}
	ns := o.ns
	if ns == nil {
		ns = natsdev.StartT(t, natsdev.Options{})
	}
	_, admin := ns.ConnectT(t, natsdev.AdminUser)

	db := o.db
	if db == "" {
		db = chtest.DatabaseName(t)
		chtest.DropAtCleanup(t, server, db)
	}
	// Next to the checkpoint key, so a restarted harness trusts the same.
	keys, err := devkeys.Generate(filepath.Join(filepath.Dir(o.keyFile), "event-keys"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"AIGOV_TRUST_FILE":                 keys.TrustFile,
		"AIGOV_NATS_URL":                   ns.URL(),
		"AIGOV_NATS_TLS_CA":                ns.CAFile(),
		"AIGOV_NATS_PASSWORD":              ns.Password(schemas.RoleAudit),
		"AIGOV_HTTP_ADDR":                  "127.0.0.1:0",
		"AIGOV_LOG_LEVEL":                  "warn",
		"AIGOV_CLICKHOUSE_ADDR":            server.Addr(),
		"AIGOV_CLICKHOUSE_DATABASE":        db,
		"AIGOV_AUDIT_BATCH_SIZE":           itoa(o.batchSize),
		"AIGOV_AUDIT_FLUSH_INTERVAL":       o.flushInterval.String(),
		"AIGOV_AUDIT_SIGNING_KEY":          o.keyFile,
		"AIGOV_AUDIT_SIGNING_KEY_CREATE":   "true",
		"AIGOV_AUDIT_MASK_FIELDS":          o.maskFields,
		"AIGOV_PERSONAL_CONTEXT_FIELDS":    o.personalFields,
		"AIGOV_AUDIT_PSEUDONYM_KEY":        o.pseudonymKey,
		"AIGOV_AUDIT_PSEUDONYM_KEY_CREATE": "true",
		"AIGOV_AUDIT_CHECKPOINT_INTERVAL":  "100ms",
	}
	if o.secureCH {
		vars["AIGOV_CLICKHOUSE_ADDR"] = server.SecureAddr()
		vars["AIGOV_CLICKHOUSE_SECURE"] = "true"
		vars["AIGOV_CLICKHOUSE_TLS_CA"] = server.CAFile()
	}
	env := servicekit.NewEnv(servicekit.MapLookup(vars))
	cfg := LoadConfig(env)
	if err := env.Err(); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.Common.NATSUser != schemas.RoleAudit {
		t.Fatalf("service connects as %q, want the audit role", cfg.Common.NATSUser)
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := servicekit.Start(ctx, cfg.Common)
	if err != nil {
		cancel()
		t.Fatalf("servicekit.Start: %v", err)
	}
	a, err := NewAudit(ctx, cfg, svc.Deps)
	if err != nil {
		cancel()
		svc.NC.Close()
		t.Fatalf("audit Start: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, a.Workers()...) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("service Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("service did not stop within 30s")
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	t.Cleanup(stop)
	h := &harness{t: t, subjects: cfg.Common.Topology().Subjects, topo: cfg.Common.Topology(), db: db,
		ch: chtest.Open(t, server, db), admin: admin, svc: svc, stop: stop, ns: ns, keyFile: o.keyFile, keys: keys}
	pk, err := privacy.LoadOrCreateKey(o.pseudonymKey, false)
	if err != nil {
		t.Fatal(err)
	}
	if h.pseud, err = privacy.NewPseudonymizer(pk); err != nil {
		t.Fatal(err)
	}
	h.waitReady(true, 5*time.Second)
	return h
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// publish stores raw on subject with msgID as its Nats-Msg-Id and waits
// for JetStream's ack.
//
// It signs as the service that publishes on the subject's stream would
// (policy for decisions, the reaper for sessions…); use publishMsg for
// anything else.
func (h *harness) publish(subject string, raw []byte, msgID string) {
	h.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = raw
	if msgID != "" {
		m.Header.Set(schemas.HeaderMsgID, msgID)
		if role := h.signerOf(subject); role != "" {
			m.Header.Set(signing.Header, h.keys.Signer(role).Sign(subject, msgID, raw))
		}
	}
	h.publishMsg(m)
}

// signerOf is the role that signs the events of subject's stream: the
// subject's kind (aigov.<kind>.…) names it.
func (h *harness) signerOf(subject string) string {
	kind, _, _ := strings.Cut(strings.TrimPrefix(subject, h.subjects.Prefix+"."), ".")
	switch kind {
	case schemas.KindVerified:
		return schemas.RoleAuthn
	case schemas.KindDecision, schemas.KindPolicy, schemas.KindEntity, schemas.KindApproval:
		return schemas.RolePolicy
	case schemas.KindSession:
		return schemas.RoleReaper
	}
	return ""
}

// publishMsg stores m as it is.
func (h *harness) publishMsg(m *nats.Msg) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.admin.PublishMsg(ctx, m); err != nil {
		h.t.Fatalf("publish on %s: %v", m.Subject, err)
	}
}

// publishDecision publishes d the way the policy service does and returns
// the event id.
func (h *harness) publishDecision(d schemas.Decision) string {
	h.t.Helper()
	id := schemas.DerivedID(d.RequestID, "decision")
	h.publish(h.subjects.Decision(d.Action), encode(h.t, id, schemas.TypeDecision, d.Timings.DecidedAt, d), id)
	return id
}

func (h *harness) count(query string, args ...any) uint64 {
	h.t.Helper()
	return chtest.Count(h.t, h.ch, query, args...)
}

// eventually polls cond until it holds or timeout passes.
func (h *harness) eventually(timeout time.Duration, what string, cond func() (bool, string)) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s not reached within %s: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) waitCount(want uint64, timeout time.Duration, query string, args ...any) {
	h.t.Helper()
	h.eventually(timeout, query, func() (bool, string) {
		got := h.count(query, args...)
		return got == want, "got " + itoa(int(got)) + ", want " + itoa(int(want))
	})
}

// consumer reads a durable consumer's state through the admin connection.
func (h *harness) consumer(name string) *jetstream.ConsumerInfo {
	h.t.Helper()
	spec, err := h.topo.Consumer(name)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.admin.Consumer(ctx, spec.Stream, name)
	if err != nil {
		h.t.Fatalf("consumer %s: %v", name, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatalf("consumer %s info: %v", name, err)
	}
	return info
}

// waitAcked waits until the consumer has delivered and acked every
// message of its stream.
func (h *harness) waitAcked(name string, timeout time.Duration) {
	h.t.Helper()
	h.eventually(timeout, name+" fully acked", func() (bool, string) {
		i := h.consumer(name)
		return i.NumPending == 0 && i.NumAckPending == 0 && i.NumRedelivered == 0,
			"pending " + itoa(int(i.NumPending)) + ", ack pending " + itoa(i.NumAckPending) + ", redelivered " + itoa(i.NumRedelivered)
	})
}

// ready asks the service's /readyz over HTTP, as an orchestrator would.
func (h *harness) ready() bool {
	h.t.Helper()
	resp, err := http.Get("http://" + h.svc.HTTP.Addr() + "/readyz")
	if err != nil {
		h.t.Fatalf("GET /readyz: %v", err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (h *harness) waitReady(want bool, timeout time.Duration) {
	h.t.Helper()
	h.eventually(timeout, "/readyz", func() (bool, string) {
		got := h.ready()
		if got {
			return got == want, "ready"
		}
		return got == want, "not ready"
	})
}
