package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// TestRun wires the real main path: config from a map, the policy role
// user, the sample policies; one verified request gets its decision back.
func TestRun(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	_, js := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	platform, _ := srv.ConnectT(t, schemas.RolePlatform)
	inbox := "_INBOX.platform.main-test"
	sub, err := platform.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := platform.Flush(); err != nil {
		t.Fatal(err)
	}

	keys := devkeys.New(t)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":       srv.URL(),
			"AIGOV_NATS_TLS_CA":    srv.CAFile(),
			"AIGOV_NATS_PASSWORD":  srv.Password(schemas.RolePolicy),
			"AIGOV_HTTP_ADDR":      "127.0.0.1:0",
			"AIGOV_POLICY_DIR":     "../../policies",
			"AIGOV_POLICY_WORKERS": "2",
			"AIGOV_LOG_LEVEL":      "warn",
			"AIGOV_SIGNING_KEY":    keys.KeyFile(schemas.RolePolicy),
			"AIGOV_TRUST_FILE":     keys.TrustFile,
		}))
	}()

	authTime := time.Now().Add(-time.Minute)
	v := schemas.Verified{
		RequestID: "main-test-1",
		Source:    "test",
		Request:   schemas.Request{Action: "dataset.update", Resource: schemas.Resource{Type: "Dataset", ID: "transactions-training"}},
		Principal: schemas.Principal{ID: schemas.PrincipalID("https://idp.test", "carol"), Type: schemas.PrincipalUser,
			Issuer: "https://idp.test", Subject: "carol", Groups: []string{"dataset-contributors", "data-scientists"}, AuthTime: &authTime,
			IssuedAt: authTime, ExpiresAt: authTime.Add(time.Hour)},
		ReplyTo:    inbox,
		ReceivedAt: time.Now(),
		VerifiedAt: time.Now(),
	}
	ev, err := schemas.NewEvent(schemas.DerivedID(v.RequestID, "verified"), "aigov/authn", schemas.TypeVerified, time.Now(), v)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := servicekit.PublishEvent(ctx, js, keys.Signer(schemas.RoleAuthn), topo.Subjects.Verified(v.Request.Action), ev); err != nil {
		t.Fatal(err)
	}

	m, err := sub.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatalf("no decision: %v", err)
	}
	var got schemas.Event
	var d schemas.Decision
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got.Data, &d); err != nil {
		t.Fatal(err)
	}
	if !d.Allowed() || len(d.PolicyIDs) != 1 || d.PolicyIDs[0] != "contributors-modify-training-data" {
		t.Errorf("got %s/%s %q", d.Decision, d.Code, d.PolicyIDs)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after shutdown", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
}

func TestRunRejectsBadStart(t *testing.T) {
	t.Parallel()
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "a.cedar"), []byte("permit(principal, action, resource);"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "entities.json"), []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile("../../policies/schema.cedarschema")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "schema.cedarschema"), schema, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{name: "bad numbers", env: map[string]string{"AIGOV_POLICY_WORKERS": "0", "AIGOV_REPLICAS": "x"},
			want: []string{"AIGOV_POLICY_WORKERS", "AIGOV_REPLICAS"}},
		{name: "policy without id", env: map[string]string{"AIGOV_POLICY_DIR": bad}, want: []string{"a.cedar:1", "no @id"}},
		{name: "missing entities", env: map[string]string{"AIGOV_POLICY_DIR": "../../policies", "AIGOV_ENTITIES_FILE": filepath.Join(bad, "nope.json")},
			want: []string{"nope.json"}},
		{name: "no keys", env: map[string]string{"AIGOV_SIGNING_KEY": "", "AIGOV_TRUST_FILE": ""},
			want: []string{"AIGOV_SIGNING_KEY is required", "AIGOV_TRUST_FILE is required"}},
	}
	keys := devkeys.New(t)
	for _, tc := range cases {
		for k, v := range map[string]string{"AIGOV_SIGNING_KEY": keys.KeyFile(schemas.RolePolicy), "AIGOV_TRUST_FILE": keys.TrustFile} {
			if _, set := tc.env[k]; !set {
				tc.env[k] = v
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// No NATS is running: each must fail before connecting.
			tc.env["AIGOV_NATS_URL"] = "nats://127.0.0.1:1"
			tc.env["AIGOV_HTTP_ADDR"] = "127.0.0.1:0"
			err := run(ctx, servicekit.MapLookup(tc.env))
			if err == nil {
				t.Fatal("started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}
