package verify_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/servicekit"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		env     map[string]string
		wantErr []string // substrings, all of which must appear
		check   func(t *testing.T, c verify.Config)
	}{
		{
			name: "defaults",
			env:  map[string]string{"AIGOV_OIDC_ISSUERS": "https://a.example, http://127.0.0.1:5556/dex"},
			check: func(t *testing.T, c verify.Config) {
				if len(c.Issuers) != 2 || c.Issuers[0].URL != "https://a.example" || c.Issuers[1].URL != "http://127.0.0.1:5556/dex" {
					t.Fatalf("issuers: %+v", c.Issuers)
				}
				for _, is := range c.Issuers {
					if len(is.Audiences) != 1 || is.Audiences[0] != "aigov" {
						t.Fatalf("audiences %q", is.Audiences)
					}
				}
				if c.Workers != 32 || c.HTTPTimeout != 5*time.Second {
					t.Fatalf("workers %d timeout %s", c.Workers, c.HTTPTimeout)
				}
			},
		},
		{
			name: "overrides; trailing slash kept verbatim",
			env: map[string]string{
				"AIGOV_OIDC_ISSUERS": "https://a.example/", "AIGOV_OIDC_AUDIENCE": "api://aigov",
				"AIGOV_AUTHN_WORKERS": "4", "AIGOV_OIDC_HTTP_TIMEOUT": "750ms",
			},
			check: func(t *testing.T, c verify.Config) {
				if c.Issuers[0].URL != "https://a.example/" || c.Issuers[0].Audiences[0] != "api://aigov" || c.Workers != 4 || c.HTTPTimeout != 750*time.Millisecond {
					t.Fatalf("config: %+v", c)
				}
			},
		},
		{name: "issuers required", env: map[string]string{}, wantErr: []string{"AIGOV_OIDC_ISSUERS is required"}},
		{
			name: "every violation reported at once",
			env: map[string]string{
				"AIGOV_OIDC_ISSUERS": "ftp://x, https://a.example, https://a.example", "AIGOV_AUTHN_WORKERS": "0", "AIGOV_OIDC_HTTP_TIMEOUT": "0s",
			},
			wantErr: []string{`"ftp://x" must be an absolute http(s) URL`, `"https://a.example" is listed twice`, "AIGOV_AUTHN_WORKERS", "AIGOV_OIDC_HTTP_TIMEOUT must be above zero"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := servicekit.NewEnv(servicekit.MapLookup(withKey(tc.env)))
			cfg := verify.LoadConfig(env)
			err := env.Err()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if err := cfg.Validate(); err != nil {
					t.Fatalf("loaded config does not validate: %v", err)
				}
				tc.check(t, cfg)
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestMaxTokenBytesFromEnv: AIGOV_OIDC_MAX_TOKEN_BYTES is read and then
// enforced by the authenticator built from the loaded config; values under
// its floor are refused. AIGOV_AUTHN_REVOCATIONS_MAX is read too.
func TestMaxTokenBytesFromEnv(t *testing.T) {
	t.Parallel()
	env := servicekit.NewEnv(servicekit.MapLookup(withKey(map[string]string{
		"AIGOV_OIDC_ISSUERS":          "https://a.example",
		"AIGOV_OIDC_MAX_TOKEN_BYTES":  "2048",
		"AIGOV_AUTHN_REVOCATIONS_MAX": "1234",
	})))
	cfg := verify.LoadConfig(env)
	if err := env.Err(); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxTokenBytes != 2048 || cfg.RevocationsMax != 1234 {
		t.Fatalf("max token bytes %d, revocations max %d", cfg.MaxTokenBytes, cfg.RevocationsMax)
	}
	a, err := verify.NewAuthenticator(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	code := func(tok string) schemas.Code {
		_, err := a.Verify(context.Background(), tok)
		d, ok := verify.IsDenial(err)
		if !ok {
			t.Fatalf("not a denial: %v", err)
		}
		return d.Code
	}
	// Well under the default 16 KiB, over the configured 2 KiB.
	if c := code(strings.Repeat("a", 2049)); c != schemas.CodeTokenTooLarge {
		t.Fatalf("2049 bytes: %s", c)
	}
	// At the limit the token is parsed (and refused for what it is).
	if c := code(strings.Repeat("a", 2048)); c != schemas.CodeMalformedToken {
		t.Fatalf("2048 bytes: %s", c)
	}
	env = servicekit.NewEnv(servicekit.MapLookup(withKey(map[string]string{"AIGOV_OIDC_ISSUERS": "https://a.example", "AIGOV_OIDC_MAX_TOKEN_BYTES": "100"})))
	verify.LoadConfig(env)
	if err := env.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_OIDC_MAX_TOKEN_BYTES") {
		t.Fatalf("a max under 1024 bytes: %v", err)
	}
}

// withKey adds the signing key authn requires (its declaration) to m, for
// the tests of the other settings.
func withKey(m map[string]string) map[string]string {
	if _, ok := m["AIGOV_SIGNING_KEY"]; !ok {
		m["AIGOV_SIGNING_KEY"] = "/authn.key"
	}
	return m
}
