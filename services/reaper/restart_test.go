package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// A reaper stopped while sessions are due to end, one of them half ended
// (its revocation written, as a crash mid-expiry leaves it), is replaced by
// a new instance: every pending expiry is emitted, each exactly once, and a
// third instance emits none again.
func TestRestartDuringPendingExpiries(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	signKeys := devkeys.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	env := func(interval string) servicekit.Lookup {
		return servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":        srv.URL(),
			"AIGOV_NATS_TLS_CA":     srv.CAFile(),
			"AIGOV_NATS_PASSWORD":   srv.Password(schemas.RoleReaper),
			"AIGOV_HTTP_ADDR":       freeAddr(t),
			"AIGOV_LOG_LEVEL":       "warn",
			"AIGOV_SESSION_MAX_AGE": "2s",
			"AIGOV_REAPER_INTERVAL": interval,
			"AIGOV_SIGNING_KEY":     signKeys.KeyFile(schemas.RoleReaper),
		})
	}
	// start runs one reaper instance; the returned func stops it and
	// checks it shut down cleanly.
	start := func(interval string) func() {
		lookup := env(interval)
		addr, _ := lookup("AIGOV_HTTP_ADDR")
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- run(runCtx, lookup) }()
		waitReady(t, addr, done)
		return func() {
			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("reaper exit: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("reaper did not stop")
			}
		}
	}

	_, js := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")

	// Instance 1 tracks the sessions; its passes run hourly after the
	// first, so none of them is ended before it stops.
	stop1 := start("1h")
	const n = 5
	keys := make([]string, n)
	for i := range n {
		p := schemas.Principal{ID: schemas.PrincipalID("https://idp.test", fmt.Sprint("user", i)), Type: schemas.PrincipalUser,
			Issuer: "https://idp.test", Subject: fmt.Sprint("user", i), SessionID: fmt.Sprint("sid-restart-", i)}
		v := schemas.Verified{RequestID: fmt.Sprint("req-restart-", i), Principal: p,
			SessionKey: schemas.SessionKey(p), TokenFingerprint: schemas.Fingerprint("t")}
		keys[i] = v.SessionKey
		ev, _ := schemas.NewEvent("", "test", schemas.TypeVerified, time.Now(), v)
		b, _ := json.Marshal(ev)
		if _, err := js.Publish(ctx, topo.Subjects.Verified("model.retrain"), b); err != nil {
			t.Fatal(err)
		}
	}
	sessionsKV, _ := js.KeyValue(ctx, topo.BucketSessions())
	revocations, _ := js.KeyValue(ctx, topo.BucketRevocations())
	natsdev.WaitFor(t, 20*time.Second, "sessions tracked", func() bool {
		for _, k := range keys {
			if _, err := sessionsKV.Get(ctx, k); err != nil {
				return false
			}
		}
		return true
	})
	stop1()

	// Due while no reaper runs; one was half ended by a crash.
	time.Sleep(2500 * time.Millisecond)
	b, _ := json.Marshal(schemas.Revocation{SessionKey: keys[0], Code: schemas.CodeSessionExpired, Reason: "session exceeded max age 2s", At: time.Now().UTC(), By: schemas.ByReaper})
	if _, err := revocations.Create(ctx, keys[0], b); err != nil {
		t.Fatal(err)
	}

	stop2 := start("50ms")
	natsdev.WaitFor(t, 20*time.Second, "every pending session ended", func() bool {
		for _, k := range keys {
			if _, err := revocations.Get(ctx, k); err != nil {
				return false
			}
			if _, err := sessionsKV.Get(ctx, k); err == nil {
				return false
			}
		}
		return true
	})
	stop2()
	stop3 := start("50ms")
	time.Sleep(300 * time.Millisecond) // several passes of instance 3
	stop3()

	perKey := expiredEvents(ctx, t, js, topo)
	for i, k := range keys {
		if perKey[k] != 1 {
			t.Errorf("session %d: %d expired events, want exactly 1", i, perKey[k])
		}
	}
	if len(perKey) != n {
		t.Errorf("expired events for %d sessions, want %d", len(perKey), n)
	}
}

// expiredEvents counts the expired events on the sessions stream per
// session key.
func expiredEvents(ctx context.Context, t *testing.T, js jetstream.JetStream, topo topology.Topology) map[string]int {
	t.Helper()
	st, err := js.Stream(ctx, topo.StreamSessions())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{topo.Subjects.Session(schemas.SessionExpired)}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(topo.Subjects.Session(schemas.SessionExpired)))
	if err != nil {
		t.Fatal(err)
	}
	total := info.State.Subjects[topo.Subjects.Session(schemas.SessionExpired)]
	out := map[string]int{}
	for range total {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := schemas.ParseEvent(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		out[ev.Subject]++
	}
	return out
}
