package sink

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// readDecision reads one decision back with every column the writer sets.
func (h *harness) readDecision(requestID string) (decisionRow, time.Time) {
	h.t.Helper()
	var r decisionRow
	var inserted time.Time
	var insertedUS uint64
	err := h.ch.QueryRow(context.Background(), "SELECT "+decisionColumns+" FROM "+h.db+".decisions FINAL WHERE request_id = ?", requestID).Scan(
		&r.EventID, &r.RequestID, &r.Source, &r.Time, &r.TimeUS, &r.ReceivedAt, &r.Action,
		&r.ResourceType, &r.ResourceID, &r.PrincipalID, &r.PrincipalType, &r.Issuer, &r.Subject, &r.Email, &r.Groups, &r.Scopes,
		&r.Decision, &r.Code, &r.Reason, &r.Stage, &r.PolicyIDs, &r.PolicyErrors, &r.PolicyVersion, &r.SessionKey,
		&r.TokenFingerprint, &r.Context, &r.AuthnUS, &r.PolicyUS, &r.TotalUS, &r.NATSSubject, &r.Seq, &inserted, &insertedUS,
		&r.SignerKeyID, &r.Signature, &r.SubjectPseudonym)
	if err != nil {
		h.t.Fatalf("read decision %s: %v", requestID, err)
	}
	return normalize(r), inserted
}

func (h *harness) readSession(eventID string) sessionRow {
	h.t.Helper()
	var r sessionRow
	var inserted time.Time
	err := h.ch.QueryRow(context.Background(), "SELECT "+sessionColumns+" FROM "+h.db+".session_events FINAL WHERE event_id = ?", eventID).Scan(
		&r.EventID, &r.Type, &r.SessionKey, &r.Issuer, &r.Subject, &r.PrincipalID, &r.SID, &r.Reason, &r.By,
		&r.RequestID, &r.TokenFingerprint, &r.AuthTime, &r.FirstSeen, &r.LastSeen, &r.Time, &r.TimeUS,
		&r.NATSSubject, &r.Seq, &inserted, &r.SubjectPseudonym)
	if err != nil {
		h.t.Fatalf("read session event %s: %v", eventID, err)
	}
	r.FirstSeen, r.LastSeen, r.Time = r.FirstSeen.UTC(), r.LastSeen.UTC(), r.Time.UTC()
	if r.AuthTime != nil {
		t := r.AuthTime.UTC()
		r.AuthTime = &t
	}
	return r
}

// decisionN is the i-th fixture decision: varied actions, outcomes and
// sub-second times.
func decisionN(i int) schemas.Decision {
	d := fixtureDecision(fmt.Sprintf("req-%04d", i))
	d.Timings.DecidedAt = decidedAt.Add(time.Duration(i) * 1500 * time.Microsecond)
	d.Action = []string{"model.retrain", "dataset.promote", "model.deploy"}[i%3]
	if i%4 == 0 {
		d.Decision, d.Code, d.Reason, d.PolicyIDs = schemas.Deny, schemas.CodePolicyDenied, "no permit", nil
	}
	return d
}

func sessionEventN(i int, kind string) (schemas.SessionEvent, string, string) {
	auth := decidedAt.Add(-time.Hour)
	s := schemas.SessionEvent{
		SessionKey: "sk-" + strconv.Itoa(i), Issuer: "https://idp", Subject: "alice", PrincipalID: "https://idp#alice",
		SessionID: "sid-" + strconv.Itoa(i), AuthTime: &auth, FirstSeen: auth, LastSeen: decidedAt, RequestID: "req-1",
	}
	if kind == schemas.SessionRevoked {
		s.Reason, s.By = "kill switch", "rita"
	}
	typ := map[string]string{
		schemas.SessionStarted: schemas.TypeSessionStarted, schemas.SessionExpired: schemas.TypeSessionExpired,
		schemas.SessionRevoked: schemas.TypeSessionRevoked, schemas.SessionTokenIssued: schemas.TypeSessionTokenSeen,
	}[kind]
	return s, schemas.DerivedID(s.SessionKey, kind), typ
}

func TestWritesEveryEvent(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 64})
	const n = 300
	published := map[string][]byte{}
	for i := range n {
		d := decisionN(i)
		id := schemas.DerivedID(d.RequestID, "decision")
		raw := encode(t, id, schemas.TypeDecision, d.Timings.DecidedAt, d)
		published[id] = raw
		h.publish(h.subjects.Decision(d.Action), raw, id)
	}
	kinds := []string{schemas.SessionStarted, schemas.SessionTokenIssued, schemas.SessionExpired, schemas.SessionRevoked}
	for i, kind := range kinds {
		s, id, typ := sessionEventN(i, kind)
		h.publish(h.subjects.Session(kind), encode(t, id, typ, decidedAt.Add(time.Duration(i)*time.Millisecond), s), id)
	}

	h.waitCount(n, 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitCount(uint64(len(kinds)), 10*time.Second, "SELECT count() FROM "+h.db+".session_events FINAL")
	h.waitCount(n+uint64(len(kinds)), 10*time.Second, "SELECT count() FROM "+h.db+".event_log FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)
	h.waitAcked(schemas.ConsumerAuditSessions, 10*time.Second)

	// One decision, field by field, including arrays and the sub-second
	// time; the i-th decision was the (i+1)-th message of its stream.
	const i = 7
	d := decisionN(i)
	got, inserted := h.readDecision(d.RequestID)
	want := normalize(expectedDecision(d, schemas.DerivedID(d.RequestID, "decision"), h.subjects.Decision(d.Action), i+1))
	// The harness signs as policy does.
	want.SignerKeyID, want.Signature = h.keys.Signer(schemas.RolePolicy).KeyID(), string(signing.Valid)
	want.SubjectPseudonym = h.pseud.Subject(d.Principal.Issuer, d.Principal.Subject)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decision row:\n got %+v\nwant %+v", got, want)
	}
	if got.TimeUS%1_000_000 == 0 {
		t.Fatalf("event_time_us %d lost the sub-second part", got.TimeUS)
	}
	if since := time.Since(inserted); since < -time.Minute || since > time.Minute {
		t.Fatalf("inserted_at %v is not now", inserted)
	}

	// One session event, field by field.
	s, id, _ := sessionEventN(3, schemas.SessionRevoked)
	authSecond := s.AuthTime.Truncate(time.Second) // DateTime keeps whole seconds
	wantS := sessionRow{
		EventID: id, Type: "revoked", SessionKey: s.SessionKey, Issuer: s.Issuer, Subject: s.Subject, PrincipalID: s.PrincipalID,
		SID: s.SessionID, Reason: "kill switch", By: "rita", RequestID: "req-1", AuthTime: &authSecond,
		FirstSeen: authSecond, LastSeen: decidedAt.Truncate(time.Second), Time: decidedAt.Add(3 * time.Millisecond).Truncate(time.Second),
		TimeUS: uint64(decidedAt.Add(3 * time.Millisecond).UnixMicro()), NATSSubject: h.subjects.Session("revoked"), Seq: 4,
		SubjectPseudonym: h.pseud.Subject(s.Issuer, s.Subject),
	}
	if gotS := h.readSession(id); !reflect.DeepEqual(gotS, wantS) {
		t.Fatalf("session row:\n got %+v\nwant %+v", gotS, wantS)
	}

	// The raw log keeps every CloudEvent byte for byte.
	rows, err := h.ch.Query(context.Background(), "SELECT event_id, data FROM "+h.db+".event_log FINAL WHERE type = ?", schemas.TypeDecision)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id, data string
		if err := rows.Scan(&id, &data); err != nil {
			t.Fatal(err)
		}
		if data != string(published[id]) {
			t.Fatalf("events.data of %s differs from what was published", id)
		}
		seen++
	}
	if seen != n {
		t.Fatalf("events holds %d decisions, want %d", seen, n)
	}

	// The views answer the auditors' questions from the same rows.
	if got := h.count("SELECT count() FROM " + h.db + ".retrains"); got != n/3 {
		t.Errorf("retrains = %d, want %d", got, n/3)
	}
	if got := h.count("SELECT sum(denies) FROM " + h.db + ".denies_by_code_hourly WHERE code = 'policy_denied'"); got != n/4 {
		t.Errorf("policy denies = %d, want %d", got, n/4)
	}

	// The metric counts committed rows per table.
	if got := rowsMetric(t, h, TableDecisions); got < n {
		t.Errorf("aigov_audit_rows_written_total{table=decisions} = %v, want >= %d", got, n)
	}
}

func rowsMetric(t *testing.T, h *harness, table string) float64 {
	t.Helper()
	mfs, err := h.svc.HTTP.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "aigov_audit_rows_written_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestRedeliveredEventKeepsOneRow(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	d := decisionN(1)
	id := schemas.DerivedID(d.RequestID, "decision")
	raw := encode(t, id, schemas.TypeDecision, d.Timings.DecidedAt, d)
	// Different Nats-Msg-Ids defeat JetStream's de-duplication, as a
	// republish after the duplicate window would: the stream holds both.
	h.publish(h.subjects.Decision(d.Action), raw, "first")
	h.publish(h.subjects.Decision(d.Action), raw, "second")
	s, sid, typ := sessionEventN(1, schemas.SessionExpired)
	sraw := encode(t, sid, typ, decidedAt, s)
	h.publish(h.subjects.Session(schemas.SessionExpired), sraw, "first")
	h.publish(h.subjects.Session(schemas.SessionExpired), sraw, "second")

	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)
	h.waitAcked(schemas.ConsumerAuditSessions, 10*time.Second)
	if got := h.consumer(schemas.ConsumerAuditDecisions).Delivered.Stream; got != 2 {
		t.Fatalf("decisions consumer delivered up to seq %d, want both copies (2)", got)
	}
	// Under the full suite's load, 18.16 once answered a FINAL read made
	// right after the commit with no row at all (the raw table held both
	// copies): wait for the rows to be read, then require exactly one.
	h.waitCount(2, 10*time.Second, "SELECT count() FROM "+h.db+".decisions")
	for _, q := range []string{
		"SELECT count() FROM " + h.db + ".decisions FINAL",
		"SELECT count() FROM " + h.db + ".decisions_final",
		"SELECT count() FROM " + h.db + ".session_events FINAL",
		"SELECT uniqExact(event_id) FROM " + h.db + ".event_log FINAL WHERE type = '" + schemas.TypeDecision + "'",
		"SELECT uniqExact(event_id) FROM " + h.db + ".event_log FINAL WHERE type = '" + schemas.TypeSessionExpired + "'",
	} {
		if got := h.count(q); got != 1 {
			t.Errorf("%s = %d, want 1", q, got)
		}
	}
	// The raw log is one row per stream position: the chain covers both.
	if got := h.count("SELECT count() FROM " + h.db + ".event_log FINAL WHERE type = '" + schemas.TypeDecision + "'"); got != 2 {
		t.Errorf("event_log holds %d positions of the republished decision, want 2", got)
	}
	// Both copies reached ClickHouse; FINAL is what made them one.
	t.Logf("raw decision rows before merge: %d", h.count("SELECT count() FROM "+h.db+".decisions"))
}

func TestUndecodableMessagesAreKeptAndDoNotBlock(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	garbage := []byte("not a cloud event \x00\xff\xfe")
	h.publish(h.subjects.Decision("model.retrain"), garbage, "")
	for i := range 3 {
		h.publishDecision(decisionN(i))
	}
	sessionGarbage := []byte(`{"specversion":"1.0","id":"x","source":"s","type":"` + schemas.TypeSessionStarted + `","time":"2026-11-25T10:00:00Z","data":{"first_seen":"yesterday"}}`)
	h.publish(h.subjects.Session(schemas.SessionStarted), sessionGarbage, "")
	s, id, typ := sessionEventN(1, schemas.SessionStarted)
	h.publish(h.subjects.Session(schemas.SessionStarted), encode(t, id, typ, decidedAt, s), id)

	h.waitCount(3, 10*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitCount(1, 10*time.Second, "SELECT count() FROM "+h.db+".session_events FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)
	h.waitAcked(schemas.ConsumerAuditSessions, 10*time.Second)

	for _, c := range []struct {
		stream  string
		subject string
		raw     []byte
	}{
		{h.topo.StreamDecisions(), h.subjects.Decision("model.retrain"), garbage},
		{h.topo.StreamSessions(), h.subjects.Session(schemas.SessionStarted), sessionGarbage},
	} {
		var data, subject, reason string
		var seq uint64
		err := h.ch.QueryRow(context.Background(), "SELECT data, nats_subject, stream_seq, invalid_reason FROM "+h.db+".event_log FINAL WHERE type = 'invalid' AND stream = ?", c.stream).
			Scan(&data, &subject, &seq, &reason)
		if err != nil {
			t.Fatalf("invalid event of %s: %v", c.stream, err)
		}
		if data != string(c.raw) || subject != c.subject || seq != 1 || reason == "" {
			t.Errorf("invalid event of %s: data %q subject %s seq %d reason %q", c.stream, data, subject, seq, reason)
		}
	}
	// Each poison message went to the dead-letter stream with its reason,
	// and from there into anomalies.
	h.waitCount(2, 10*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE kind = 'poison' AND reason != '' AND stream_seq = 1")
	h.waitCount(1, 10*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE stream = ? AND consumer = ? AND data = ?",
		h.topo.StreamSessions(), schemas.ConsumerAuditSessions, string(sessionGarbage))
	h.waitAcked(h.topo.AuditConsumer(h.topo.StreamDeadLetter()), 10*time.Second)
}

func TestShutdownFlushesLastBatch(t *testing.T) {
	t.Parallel()
	// A flush interval far longer than the test: only shutdown can flush.
	h := startHarness(t, harnessOptions{batchSize: 1000, flushInterval: 15 * time.Second})
	for i := range 5 {
		h.publishDecision(decisionN(i))
	}
	h.eventually(5*time.Second, "batch held", func() (bool, string) {
		n := h.consumer(schemas.ConsumerAuditDecisions).NumAckPending
		return n == 5, "ack pending " + strconv.Itoa(n)
	})
	if got := h.count("SELECT count() FROM " + h.db + ".decisions"); got != 0 {
		t.Fatalf("%d rows written before the flush interval or shutdown", got)
	}
	h.stop()
	if got := h.count("SELECT count() FROM " + h.db + ".decisions FINAL"); got != 5 {
		t.Fatalf("after shutdown: %d rows, want the last batch of 5", got)
	}
	if i := h.consumer(schemas.ConsumerAuditDecisions); i.NumAckPending != 0 || i.AckFloor.Stream != 5 {
		t.Fatalf("after shutdown: ack pending %d, ack floor %d; want the batch acked", i.NumAckPending, i.AckFloor.Stream)
	}
}

// TestClickHouseOutage kills the package's ClickHouse, so it must not run
// in parallel: Go runs it before any parallel test resumes.
func TestClickHouseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a ClickHouse outage of seconds under load")
	}
	began := time.Now()
	h := startHarness(t, harnessOptions{})
	for i := range 10 {
		h.publishDecision(decisionN(i))
	}
	h.waitCount(10, 10*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 5*time.Second)

	if err := server.Kill(); err != nil {
		t.Fatalf("kill clickhouse: %v", err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted { // the other tests need their server back
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := server.Restart(ctx); err != nil {
				t.Errorf("restart clickhouse at cleanup: %v", err)
			}
		}
	})
	for i := 10; i < 30; i++ {
		h.publishDecision(decisionN(i))
	}
	s, id, typ := sessionEventN(1, schemas.SessionRevoked)
	h.publish(h.subjects.Session(schemas.SessionRevoked), encode(t, id, typ, decidedAt, s), id)

	h.waitReady(false, 5*time.Second)
	h.eventually(5*time.Second, "outage batch held unacked", func() (bool, string) {
		i := h.consumer(schemas.ConsumerAuditDecisions)
		return i.NumAckPending == 20, fmt.Sprintf("ack pending %d", i.NumAckPending)
	})
	// Hold the outage across several insert attempts: nothing may be acked.
	time.Sleep(3 * time.Second)
	if i := h.consumer(schemas.ConsumerAuditDecisions); i.NumAckPending != 20 || i.AckFloor.Stream != 10 {
		t.Fatalf("during the outage: ack pending %d, ack floor %d; want 20 held and the floor at 10", i.NumAckPending, i.AckFloor.Stream)
	}
	if i := h.consumer(schemas.ConsumerAuditSessions); i.NumAckPending != 1 || i.AckFloor.Stream != 0 {
		t.Fatalf("sessions during the outage: ack pending %d, ack floor %d", i.NumAckPending, i.AckFloor.Stream)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := server.Restart(ctx); err != nil {
		t.Fatalf("restart clickhouse: %v", err)
	}
	restarted = true
	h.waitCount(30, 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitCount(1, 10*time.Second, "SELECT count() FROM "+h.db+".session_events FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)
	h.waitAcked(schemas.ConsumerAuditSessions, 10*time.Second)
	h.waitReady(true, 5*time.Second)
	if took := time.Since(began); took > 40*time.Second {
		t.Fatalf("outage test took %s, want under 40s", took)
	} else {
		t.Logf("outage and recovery took %s", took.Round(time.Millisecond))
	}
}
