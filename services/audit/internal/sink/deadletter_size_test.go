package sink

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
)

// TestOversizedDeadLetterFitsTheStream (issue 18 c): a message as large as
// the request stream takes (near 1 MiB), all '<', is given up on by
// authn's consumer. Carried as text, its body JSON-escapes six-fold, far
// over the dead-letter stream's 2 MiB: before, the dead-letter worker's
// publish was refused at every attempt, without end. Now the body is cut
// to fit, its size recorded, and the give-up reaches the anomalies table.
func TestOversizedDeadLetterFitsTheStream(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: waits for a consumer to give up (MaxDeliver); make test runs it")
	}
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Raw '<' (valid JSON, as a non-Go publisher writes it): 900 KiB on
	// the request stream, 5.4 MiB once escaped in a dead letter.
	blob := strings.Repeat("<", 900<<10)
	raw := []byte(`{"specversion":"1.0","id":"req-huge","source":"test","type":"` + schemas.TypeRequest +
		`","time":"2026-11-25T10:00:00Z","data":{"action":"model.retrain","context":{"blob":"` + blob + `"}}}`)
	h.giveUp(ctx, raw, "req-huge")
	h.waitCount(1, 40*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE kind = 'max_deliveries' AND consumer = 'authn' AND stream_seq = 1 AND position(reason, 'truncated') > 0 AND startsWith(data, '{')")

	m := h.lastDeadLetter(ctx)
	if len(m.Data) > schemas.MaxDeadLetterBytes || len(m.Data) < schemas.MaxDeadLetterBytes/2 {
		t.Errorf("the dead letter is %d bytes; want it cut to fit %d, not emptied", len(m.Data), schemas.MaxDeadLetterBytes)
	}
	if !strings.Contains(string(m.Data), `"data_bytes":`+itoa(len(raw))) {
		t.Errorf("the dead letter does not record the body's %d bytes", len(raw))
	}
}

// TestDeadLetterRedactsPersonalFields (#15): a request authn gave up on
// (its key store down, say) was never sealed; its dead letter carries the
// request, so the fields authn would have sealed are redacted in it, in
// the dead-letter stream and in ClickHouse alike.
func TestDeadLetterRedactsPersonalFields(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{personalFields: "ssn, Home_Address"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	raw := []byte(`{"specversion":"1.0","id":"req-personal","source":"test","type":"` + schemas.TypeRequest +
		`","time":"2026-11-25T10:00:00Z","data":{"action":"model.retrain","context":{"SSN":"078-05-1120","home_address":"1 Main St","environment":"staging"}}}`)
	h.giveUp(ctx, raw, "req-personal")
	h.waitCount(1, 40*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE kind = 'max_deliveries' AND consumer = 'authn' AND position(data, 'staging') > 0")
	var data string
	if err := h.ch.QueryRow(ctx, "SELECT data FROM "+h.db+".anomalies FINAL WHERE kind = 'max_deliveries' AND consumer = 'authn' LIMIT 1").Scan(&data); err != nil {
		t.Fatal(err)
	}
	m := h.lastDeadLetter(ctx)
	for where, s := range map[string]string{"the dead-letter stream": string(m.Data), "anomalies.data": data} {
		if strings.Contains(s, "078-05-1120") || strings.Contains(s, "1 Main St") {
			t.Errorf("%s holds a personal field in clear: %s", where, s)
		}
		if !strings.Contains(s, "staging") || !strings.Contains(s, "***") {
			t.Errorf("%s: want the other fields kept and the personal ones redacted: %s", where, s)
		}
	}
}

// giveUp publishes the request raw under id and has authn's consumer give
// up on it (two deliveries, each nak'd), as an authn failing on it would.
// Not terminated: a work queue drops a terminated message, and the dead
// letter carries no body then.
func (h *harness) giveUp(ctx context.Context, raw []byte, id string) {
	t := h.t
	t.Helper()
	spec, err := h.topo.Consumer(schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	spec.Config.MaxDeliver, spec.Config.AckWait = 2, time.Second
	cons, err := h.admin.CreateOrUpdateConsumer(ctx, spec.Stream, spec.Config)
	if err != nil {
		t.Fatal(err)
	}
	h.publish(h.subjects.Request("model.retrain"), raw, id)
	for range 3 {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			_ = m.Nak()
		}
	}
}

// lastDeadLetter is the newest message of the dead-letter stream.
func (h *harness) lastDeadLetter(ctx context.Context) *jetstream.RawStreamMsg {
	t := h.t
	t.Helper()
	dlq, err := h.admin.Stream(ctx, h.topo.StreamDeadLetter())
	if err != nil {
		t.Fatal(err)
	}
	info, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dlq.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
