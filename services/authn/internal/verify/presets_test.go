package verify

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
)

// TestExampleConfigsLoad: every shipped example loads and validates, and
// presets fill their mapping.
func TestExampleConfigsLoad(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../examples/*")
	if err != nil || len(files) < 7 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			issuers, err := LoadIssuersFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Issuers: issuers, Workers: 1, HTTPTimeout: 1}
			if _, err := NewAuthenticator(cfg, zerolog.Nop()); err != nil {
				t.Fatal(err)
			}
			for _, is := range issuers {
				if is.Preset != "" && (is.PrincipalType != schemas.PrincipalWorkload || len(is.Claims.Attributes) < 5) {
					t.Errorf("preset %s not applied: %+v", is.Preset, is)
				}
			}
		})
	}
	// Through the environment, as the service loads it.
	env := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_OIDC_CONFIG": "../../examples/entra.yaml", "AIGOV_SIGNING_KEY": "/authn.key"}))
	cfg := LoadConfig(env)
	if err := env.Err(); err != nil || len(cfg.Issuers) != 1 || cfg.Issuers[0].Tenant == "" {
		t.Fatalf("AIGOV_OIDC_CONFIG: %v %+v", err, cfg.Issuers)
	}
}

func TestIssuerFileErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ doc, want string }{
		"unknown key":        {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    audience: x\n", "field audience not found"},
		"unknown preset":     {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    preset: gitlab\n", `unknown preset "gitlab"`},
		"symmetric alg":      {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    algorithms: [HS256]\n", `algorithm "HS256"`},
		"logout typ":         {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    token_types: [logout+jwt]\n", "logout+jwt"},
		"no audience":        {"issuers:\n  - url: https://a.example\n", "at least one audience"},
		"pin not an attr":    {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    require: {team: [a]}\n", `require names "team"`},
		"bad template":       {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    claims: {principal_id: \"{oid\"}\n", "unclosed {"},
		"bad principal type": {"issuers:\n  - url: https://a.example\n    audiences: [x]\n    principal_type: Robot\n", "Robot"},
		"none":               {"issuers: []\n", "lists no issuers"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseIssuers([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestPresets verifies Kubernetes and GitHub Actions tokens (claims as
// those issuers send them) against a test issuer over HTTP configured
// with the preset, including the pins.
func TestPresets(t *testing.T) {
	t.Parallel()
	k8s, gh, kc := startIssuer(t), startIssuer(t), startIssuer(t)
	doc := "issuers:\n" +
		"  - {url: " + k8s.srv.URL + ", audiences: [aigov], preset: kubernetes, require: {namespace: [ml-training]}}\n" +
		"  - {url: " + gh.srv.URL + ", audiences: [aigov], preset: github-actions, require: {repository_owner_id: ['123456']}, claims: {principal_id: 'repo:{repository_id}'}}\n" +
		"  - {url: " + kc.srv.URL + ", audiences: [aigov], claims: {groups: realm_access.roles, scopes: [scp]}, mfa_acr_values: ['2']}\n"
	issuers, err := ParseIssuers([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	a := newAuthFor(t, Config{Issuers: issuers})
	k8sClaims := func(ns, sa string) map[string]any {
		return k8s.claims(func(c map[string]any) {
			for _, k := range []string{"groups", "scope", "amr", "email", "name", "sid", "auth_time"} {
				delete(c, k)
			}
			c["sub"] = "system:serviceaccount:" + ns + ":" + sa
			c["kubernetes.io"] = map[string]any{
				"namespace":      ns,
				"serviceaccount": map[string]any{"name": sa, "uid": "sa-uid-1"},
				"pod":            map[string]any{"name": "trainer-0", "uid": "pod-uid-1"},
			}
		})
	}
	ghClaims := func(ownerID any) map[string]any {
		return gh.claims(func(c map[string]any) {
			c["sub"] = "repo:acme/models:environment:production"
			c["repository"], c["repository_id"], c["repository_owner"], c["repository_owner_id"] = "acme/models", "987654321", "acme", ownerID
			c["workflow"], c["ref"], c["environment"] = "train", "refs/heads/main", "production"
		})
	}
	ctx := context.Background()
	t.Run("kubernetes", func(t *testing.T) {
		t.Parallel()
		id, err := a.Verify(ctx, sign(t, jose.RS256, k8s.key, k8s.kid, k8sClaims("ml-training", "trainer")))
		if err != nil {
			t.Fatal(err)
		}
		p := id.Principal
		want := map[string]string{"namespace": "ml-training", "serviceaccount": "trainer", "serviceaccount_uid": "sa-uid-1", "pod": "trainer-0", "pod_uid": "pod-uid-1"}
		if p.Type != schemas.PrincipalWorkload || p.ID != k8s.srv.URL+"#system:serviceaccount:ml-training:trainer" || !equalMaps(p.Attributes, want) {
			t.Fatalf("principal %+v", p)
		}
		if _, err := a.Verify(ctx, sign(t, jose.RS256, k8s.key, k8s.kid, k8sClaims("default", "trainer"))); codeOf(err) != schemas.CodeWorkloadNotAllowed {
			t.Fatalf("namespace outside the pin: %v", err)
		}
		bad := k8sClaims("ml-training", "trainer")
		bad["sub"] = "system:serviceaccount:kube-system:admin"
		if _, err := a.Verify(ctx, sign(t, jose.RS256, k8s.key, k8s.kid, bad)); codeOf(err) != schemas.CodeMalformedToken {
			t.Fatalf("sub inconsistent with kubernetes.io: %v", err)
		}
	})
	t.Run("github-actions", func(t *testing.T) {
		t.Parallel()
		id, err := a.Verify(ctx, sign(t, jose.RS256, gh.key, gh.kid, ghClaims("123456")))
		if err != nil {
			t.Fatal(err)
		}
		p := id.Principal
		if p.Type != schemas.PrincipalWorkload || p.ID != gh.srv.URL+"#repo:987654321" || p.Subject != "repo:acme/models:environment:production" {
			t.Fatalf("principal %+v", p)
		}
		for k, v := range map[string]string{"repository": "acme/models", "repository_id": "987654321", "repository_owner": "acme", "repository_owner_id": "123456", "workflow": "train", "ref": "refs/heads/main", "environment": "production"} {
			if p.Attributes[k] != v {
				t.Errorf("attribute %s = %q, want %q", k, p.Attributes[k], v)
			}
		}
		// A numeric id is read as its decimal string.
		if _, err := a.Verify(ctx, sign(t, jose.RS256, gh.key, gh.kid, ghClaims(123456))); err != nil {
			t.Fatalf("numeric owner id: %v", err)
		}
		if _, err := a.Verify(ctx, sign(t, jose.RS256, gh.key, gh.kid, ghClaims("999"))); codeOf(err) != schemas.CodeWorkloadNotAllowed {
			t.Fatalf("another owner: %v", err)
		}
	})
	t.Run("nested groups, scp, acr proves mfa", func(t *testing.T) {
		t.Parallel()
		id, err := a.Verify(ctx, sign(t, jose.RS256, kc.key, kc.kid, kc.claims(func(c map[string]any) {
			delete(c, "groups")
			delete(c, "amr")
			c["realm_access"] = map[string]any{"roles": []string{"data-scientists", "ml-platform"}}
			c["scp"] = []string{"model:retrain"}
			c["acr"] = "2"
		})))
		if err != nil {
			t.Fatal(err)
		}
		p := id.Principal
		if strings.Join(p.Groups, ",") != "data-scientists,ml-platform" || strings.Join(p.Scopes, ",") != "model:retrain" || !p.MFA || p.ACR != "2" {
			t.Fatalf("principal %+v", p)
		}
		id, err = a.Verify(ctx, sign(t, jose.RS256, kc.key, kc.kid, kc.claims(func(c map[string]any) { c["amr"] = []string{"pwd"}; c["acr"] = "1" })))
		if err != nil || id.Principal.MFA {
			t.Fatalf("password only proved mfa: %v %+v", err, id.Principal)
		}
	})
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
