package natsdev_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// The platform user may publish requests and nothing else on the bus: a
// forged decision, verified or session event is refused by the server and
// never reaches a stream.
func TestPlatformCannotPublishPipelineSubjects(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	if err := topo.Ensure(ctx, ajs); err != nil {
		t.Fatal(err)
	}

	violations := make(chan error, 16)
	platform, err := srv.Connect(schemas.RolePlatform, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		violations <- err
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer platform.Close()
	pjs, _ := jetstream.New(platform)

	subjects := topo.Subjects
	for _, subj := range []string{subjects.Decision("model.deploy"), subjects.Verified("model.deploy"), subjects.Session("expired")} {
		pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := pjs.Publish(pctx, subj, []byte(`{"forged":true}`))
		pcancel()
		if err == nil {
			t.Fatalf("publish on %s was acknowledged; the platform user must not publish there", subj)
		}
		select {
		case v := <-violations:
			if !strings.Contains(strings.ToLower(v.Error()), "permissions violation") || !strings.Contains(v.Error(), subj) {
				t.Fatalf("publish on %s: want a permissions violation naming the subject, got %v", subj, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("publish on %s: no permissions violation reported", subj)
		}
	}
	for _, name := range []string{topo.StreamDecisions(), topo.StreamVerified(), topo.StreamSessions()} {
		st, err := ajs.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if n := st.CachedInfo().State.Msgs; n != 0 {
			t.Fatalf("stream %s holds %d messages after forged publishes", name, n)
		}
	}

	// A request is allowed and lands in the request stream.
	if _, err := pjs.Publish(ctx, subjects.Request("model.retrain"), []byte(`{}`)); err != nil {
		t.Fatalf("platform publish of a request: %v", err)
	}
	// Reading another role's inbox is refused too.
	if _, err := platform.SubscribeSync("_INBOX.authn.>"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-violations:
		if !strings.Contains(strings.ToLower(v.Error()), "permissions violation") {
			t.Fatalf("subscribe to another inbox: got %v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscribing to another role's inbox was not refused")
	}
}

func TestStartNeedsDir(t *testing.T) {
	t.Parallel()
	if _, err := natsdev.Start(natsdev.Options{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Fatalf("want an error naming Dir, got %v", err)
	}
}

func TestWrongPasswordRefused(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	_, err := nats.Connect(srv.URL(), append(srv.TLSOptions(schemas.RoleAuthn), nats.UserInfo(schemas.RoleAuthn, "wrong"))...)
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("want authorization error, got %v", err)
	}
}

// Restart brings the embedded server back on the same port, store and
// passwords: a published request is still in its stream, and a role
// connects with the password it had.
func TestRestartKeepsStoreAndPasswords(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, pw := srv.URL(), srv.Password(schemas.RolePlatform)
	nc, err := srv.Connect(schemas.RolePlatform)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	topo := topology.New("")
	if _, err := js.Publish(ctx, topo.Subjects.Request("model.retrain"), []byte("{}"), jetstream.WithMsgID("restart-1")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if srv.URL() != url || srv.Password(schemas.RolePlatform) != pw {
		t.Fatalf("restart moved the server or changed passwords: %s → %s", url, srv.URL())
	}
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	s, err := ajs.Stream(ctx, topo.StreamRequests())
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("requests stream holds %d messages after the restart, want 1", n)
	}
}
