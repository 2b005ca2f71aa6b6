package servicekit_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// A pipelined runner stores every event a handler publishes, signed, in
// batches under few signatures, acks each input only once its events are
// stored, and answers only after that; an input whose event the stream
// refuses is not acked, and comes back.
func TestPipelinedRunnerStoresBeforeItAcksAndReplies(t *testing.T) {
	t.Parallel()
	pb := newPipelineBus(t)
	js, cons, keys, pub, replies := pb.js, pb.cons, pb.keys, pb.pub, pb.replies
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 200
	var attempts sync.Map // input -> deliveries seen
	var refused atomic.Int64
	h := func(ctx context.Context, m jetstream.Msg) error {
		i, _ := strconv.Atoi(string(m.Data()))
		c, _ := attempts.LoadOrStore(i, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
		subject := fmt.Sprintf("out.ok.%d", i)
		if i == 7 {
			subject = "out.nowhere" // no stream captures it: the PubAck is an error
			refused.Add(1)
		}
		stored, err := pub.Publish(ctx, servicekit.Outgoing{NATSSubject: subject, ID: fmt.Sprint("ev-", i), Type: "t.v1", Time: time.Now(), Data: i})
		if err != nil {
			return err
		}
		pub.Reply(ctx, fmt.Sprint(i), "", fmt.Sprintf("_INBOX.test.replies.%d", i), stored)
		return nil
	}
	r := newRunner(16)
	if err := r.Pipeline(pub.PipelineOptions(2 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, cons, h) }()
	for i := range n {
		if _, err := js.Publish(ctx, fmt.Sprintf("in.%d", i), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}

	// Every reply comes after its event is in the stream, with the
	// stored event's signature.
	out, _ := js.Stream(ctx, "OUT")
	for got := 0; got < n-1; got++ {
		m, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%d replies, then: %v", got, err)
		}
		id := m.Header.Get(schemas.HeaderMsgID)
		stored, err := out.GetLastMsgForSubject(ctx, m.Header.Get(signing.HeaderSubject))
		if err != nil || stored.Header.Get(schemas.HeaderMsgID) != id {
			t.Fatalf("reply for %s sent before its event was stored (%v)", id, err)
		}
		if _, err := keys.Trust().VerifyMsg(stored.Subject, stored.Header, stored.Data, schemas.RolePolicy); err != nil {
			t.Fatalf("stored event %s: %v", id, err)
		}
		if _, err := keys.Trust().VerifyMsg(m.Header.Get(signing.HeaderSubject), m.Header, m.Data, schemas.RolePolicy); err != nil {
			t.Fatalf("reply %s: %v", id, err)
		}
	}
	if m, err := replies.NextMsg(300 * time.Millisecond); err == nil && strings.HasSuffix(m.Subject, ".7") {
		t.Fatal("the input whose event was refused got a reply")
	}
	// The refused input is retried (never acked), up to MaxDeliver.
	natsdev.WaitFor(t, 10*time.Second, "the refused input retried", func() bool { return refused.Load() >= 2 })
	info, _ := out.Info(ctx)
	if info.State.Msgs != n-1 {
		t.Fatalf("OUT holds %d events, want %d", info.State.Msgs, n-1)
	}
	st := keys.Signer(schemas.RolePolicy).Stats()
	if st.Events < n-1 || st.Ed25519 >= st.Events/2 {
		t.Errorf("%d events under %d signatures: not batched", st.Events, st.Ed25519)
	}
	t.Logf("%d events under %d Ed25519 signatures", st.Events, st.Ed25519)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ci, _ := cons.Info(ctx)
	if ci.NumAckPending > 1 {
		t.Fatalf("%d inputs left unacked after shutdown; only the refused one may be", ci.NumAckPending)
	}
}

// A redelivered input decided again, differently (the state changed
// between deliveries): the stream keeps the first decision (same
// Nats-Msg-Id), and the reply must carry that one, not the new verdict,
// though the new one is validly signed too. (Found by review: the reply
// said allow while the record said deny.)
func TestReplyCarriesTheStoredEventOnADuplicate(t *testing.T) {
	t.Parallel()
	pb := newPipelineBus(t)
	js, cons, keys, pub, replies := pb.js, pb.cons, pb.keys, pb.pub, pb.replies
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	attempt := 0
	h := func(ctx context.Context, m jetstream.Msg) error {
		attempt++
		verdict := "deny"
		if attempt > 1 {
			verdict = "allow" // state changed between deliveries
		}
		stored, err := pub.Publish(ctx, servicekit.Outgoing{NATSSubject: "out.ok.decision", ID: "ev-1", Type: "t.v1", Time: time.Now(), Data: verdict})
		if err != nil {
			return err
		}
		// a second event of the same input (approval.used, policy.changed...)
		second := "out.ok.gov"
		if attempt == 1 {
			second = "out.nowhere" // its stream refuses it this once
		}
		if _, err := pub.Publish(ctx, servicekit.Outgoing{NATSSubject: second, ID: "gov-1", Type: "t.v1", Time: time.Now(), Data: 1}); err != nil {
			return err
		}
		// What this handling adds to its reply alone (a wrapped key) must
		// not ride on the earlier stored copy the reply then carries.
		pub.ReplyWith(ctx, "r1", "", "_INBOX.test.replies.1", stored, nats.Header{"X-Extra": {verdict}})
		return nil
	}
	r := newRunner(1)
	if err := r.Pipeline(pub.PipelineOptions(0)); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, cons, h) }()
	if _, err := js.Publish(ctx, "in.1", []byte("1")); err != nil {
		t.Fatal(err)
	}
	m, err := replies.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	out, err := js.Stream(ctx, "OUT")
	if err != nil {
		t.Fatal(err)
	}
	st, err := out.GetLastMsgForSubject(ctx, "out.ok.decision")
	if err != nil {
		t.Fatal(err)
	}
	if attempt < 2 {
		t.Fatalf("the input was handled %d times; the test needs a redelivery", attempt)
	}
	if _, err := keys.Trust().VerifyMsg(m.Header.Get(signing.HeaderSubject), m.Header, m.Data, schemas.RolePolicy); err != nil {
		t.Fatalf("reply does not verify: %v", err)
	}
	if string(st.Data) != string(m.Data) {
		t.Errorf("the requester got a validly signed event that the stream never stored")
	}
	if x := m.Header.Get("X-Extra"); x != "" {
		t.Errorf("the reply carries the stored deny with this handling's extra header %q", x)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// pipelineBus is a stream of inputs (IN, consumer c), one of outputs (OUT,
// on out.ok.>, de-duplicated), a publisher signing as policy, and the
// requesters' reply inbox.
type pipelineBus struct {
	js      jetstream.JetStream
	cons    jetstream.Consumer
	keys    *devkeys.Set
	pub     *servicekit.Publisher
	replies *nats.Subscription
}

func newPipelineBus(t *testing.T) pipelineBus {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{Open: true})
	nc, js := srv.ConnectT(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sc := range []jetstream.StreamConfig{
		{Name: "IN", Subjects: []string{"in.>"}},
		{Name: "OUT", Subjects: []string{"out.ok.>"}, Duplicates: time.Minute},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "IN", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxDeliver: 3})
	if err != nil {
		t.Fatal(err)
	}
	keys := devkeys.New(t)
	pub, err := servicekit.NewPublisher(js, nc, keys.Signer(schemas.RolePolicy), "aigov/test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	replies, err := nc.SubscribeSync("_INBOX.test.replies.>")
	if err != nil {
		t.Fatal(err)
	}
	return pipelineBus{js: js, cons: cons, keys: keys, pub: pub, replies: replies}
}

// A message that comes alone is published at once, not after the
// linger: with no other message in the workers' hands nothing is coming
// to share its signature, and waiting would only delay it (a quiet
// stream paid AIGOV_SIGNING_LINGER at every signing hop).
func TestPipelinedRunnerDoesNotLingerWhenIdle(t *testing.T) {
	t.Parallel()
	pb := newPipelineBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := func(ctx context.Context, m jetstream.Msg) error {
		stored, err := pb.pub.Publish(ctx, servicekit.Outgoing{NATSSubject: "out.ok." + string(m.Data()), ID: "ev-" + string(m.Data()), Type: "t.v1", Time: time.Now(), Data: 1})
		if err != nil {
			return err
		}
		pb.pub.Reply(ctx, "r", "", "_INBOX.test.replies."+string(m.Data()), stored)
		return nil
	}
	const linger = 2 * time.Second
	r := newRunner(4)
	if err := r.Pipeline(pb.pub.PipelineOptions(linger)); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, pb.cons, h) }()
	for i := range 3 {
		start := time.Now()
		if _, err := pb.js.Publish(ctx, fmt.Sprintf("in.%d", i), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		if _, err := pb.replies.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("message %d: no reply: %v", i, err)
		}
		if took := time.Since(start); took >= linger/2 {
			t.Errorf("message %d alone was answered after %s: it waited for the linger (%s)", i, took, linger)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
