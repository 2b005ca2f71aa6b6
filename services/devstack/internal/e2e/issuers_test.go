package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// TestExtraIssuersEndToEnd is `make run ISSUERS=file`: the stack's authn
// trusts a second, real OIDC provider (its own keys, discovery and client
// id, named in an AIGOV_OIDC_CONFIG file) besides the dev IdP, one authn
// for both, while a provider in neither stays untrusted_issuer.
func TestExtraIssuersEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	corp, err := idp.Start(ctx, idp.Options{ClientID: "aigov-corp"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { corp.Close() })
	stranger, err := idp.Start(ctx, idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stranger.Close() })
	file := filepath.Join(t.TempDir(), "issuers.yaml")
	doc := fmt.Sprintf("issuers:\n  - url: %s\n    audiences: [aigov-corp]\n    algorithms: [RS256]\n", corp.Issuer())
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin, Issuers: file})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })

	retrain := schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"},
		Context: map[string]any{"environment": "staging"}}
	for _, tc := range []struct {
		name     string
		p        *idp.Provider
		decision string
		code     schemas.Code
	}{
		{"the dev IdP", st.IdP, schemas.Allow, ""},
		{"the issuer of the file", corp, schemas.Allow, ""},
		{"an issuer in neither", stranger, schemas.Deny, schemas.CodeUntrustedIssuer},
	} {
		tok, err := tc.p.Token(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		d, err := st.Client.Authorize(ctx, client.Call{Token: tok, Request: retrain})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d.Decision != tc.decision || d.Code != tc.code {
			t.Errorf("%s: %s/%s (%s), want %s/%s", tc.name, d.Decision, d.Code, d.Reason, tc.decision, tc.code)
		}
		if tc.decision == schemas.Allow && (d.Principal == nil || d.Principal.Issuer != tc.p.Issuer()) {
			t.Errorf("%s: principal %+v, want issuer %s", tc.name, d.Principal, tc.p.Issuer())
		}
	}
}
