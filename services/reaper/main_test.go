package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// The binary's wiring: it serves readiness, tracks a verified event's
// session as the reaper user, ends it at max age, and stops cleanly when
// its context ends.
func TestRunTracksAndExpiresThenStops(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	keys := devkeys.New(t)
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":        srv.URL(),
			"AIGOV_NATS_TLS_CA":     srv.CAFile(),
			"AIGOV_NATS_PASSWORD":   srv.Password(schemas.RoleReaper),
			"AIGOV_HTTP_ADDR":       addr,
			"AIGOV_LOG_LEVEL":       "warn",
			"AIGOV_SESSION_MAX_AGE": "2s",
			"AIGOV_REAPER_INTERVAL": "50ms",
			"AIGOV_SIGNING_KEY":     keys.KeyFile(schemas.RoleReaper),
		}))
	}()
	waitReady(t, addr, done)

	_, js := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	p := schemas.Principal{ID: schemas.PrincipalID("https://idp.test", "alice"), Issuer: "https://idp.test", Subject: "alice", SessionID: "sid-main"}
	v := schemas.Verified{RequestID: "req-main", Principal: p, SessionKey: schemas.SessionKey(p), TokenFingerprint: schemas.Fingerprint("t")}
	ev, _ := schemas.NewEvent("", "test", schemas.TypeVerified, time.Now(), v)
	b, _ := json.Marshal(ev)
	if _, err := js.Publish(ctx, topo.Subjects.Verified("model.retrain"), b); err != nil {
		t.Fatal(err)
	}

	revocations, err := js.KeyValue(ctx, topo.BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	// Tracked at once, revoked once the 2s max age has passed.
	deadline := time.Now().Add(20 * time.Second)
	for {
		e, err := revocations.Get(ctx, v.SessionKey)
		if err == nil {
			var rv schemas.Revocation
			if err := json.Unmarshal(e.Value(), &rv); err != nil || rv.Code != schemas.CodeSessionExpired {
				t.Fatalf("revocation %s: %+v (%v)", e.Value(), rv, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not revoked within 20s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := js.Stream(ctx, topo.StreamSessions())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(topo.Subjects.All(schemas.KindSession)))
	if err != nil {
		t.Fatal(err)
	}
	started, expired := info.State.Subjects[topo.Subjects.Session(schemas.SessionStarted)], info.State.Subjects[topo.Subjects.Session(schemas.SessionExpired)]
	if started != 1 || expired != 1 {
		t.Errorf("session events: %d started, %d expired; want 1 each", started, expired)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}

func TestRunReportsEveryConfigError(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), servicekit.MapLookup(map[string]string{
		"AIGOV_SESSION_MAX_AGE": "forever",
		"AIGOV_REAPER_MAX_SCAN": "-1",
	}))
	if err == nil || !strings.Contains(err.Error(), "AIGOV_SESSION_MAX_AGE") || !strings.Contains(err.Error(), "AIGOV_REAPER_MAX_SCAN") {
		t.Errorf("run: got %v, want both bad variables named", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitReady(t *testing.T, addr string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("run returned before ready: %v", err)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 20s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
