package verify_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/runtime"
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
			env := runtime.NewEnv(runtime.MapLookup(tc.env))
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
