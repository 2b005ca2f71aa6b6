package verify

import (
	"encoding/base64"
	"testing"
)

// FuzzParseToken feeds arbitrary bearer values through the unverified
// parsing and claim mapping: they must never panic, and whatever parses
// must name an issuer and carry no duplicate names.
func FuzzParseToken(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	f.Add(enc([]byte(`{"alg":"RS256","kid":"k1","typ":"JWT"}`)) + "." + enc([]byte(`{"iss":"https://a.example","sub":"x","aud":["aigov","b"],"exp":1e10,"groups":["g"],"realm_access":{"roles":["r"]},"kubernetes.io":{"namespace":"n"}}`)) + ".c2ln")
	f.Add(enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(`{"iss":"x"}`)) + ".")
	f.Add(enc([]byte(`{"alg":"RS256","alg":"none"}`)) + "." + enc([]byte(`{"iss":"x","ISS":"y"}`)) + ".c2ln")
	f.Add(enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"iss":"x","a":{"b":[{"c":1,"C":2}]},"s\u0075b":"q","sub":"r"}`)) + ".c2ln")
	f.Add("a.b.c.d.e")
	f.Add("..")
	cfg := Issuer{Claims: ClaimMapping{
		Groups: "realm_access.roles", Scopes: []string{"scope", "scp"},
		Attributes: map[string]string{"ns": "kubernetes.io.namespace", "owner": "repository_owner_id"},
	}.withDefaults(), MFAACRValues: []string{"2"}}
	tmpl, err := parseTemplate("{sub}@{kubernetes.io.namespace}")
	if err != nil {
		f.Fatal(err)
	}
	cfg.tmpl = tmpl
	f.Fuzz(func(t *testing.T, raw string) {
		tok, d := parseToken(raw)
		if d != nil {
			if d.Code == "" || d.Reason == "" {
				t.Fatalf("denial without code or reason: %+v", d)
			}
			return
		}
		if tok.iss == "" {
			t.Fatal("parsed token without iss")
		}
		if name, err := duplicateName(tok.payload); err == nil && name != "" {
			t.Fatalf("parsed token repeats %q", name)
		}
		_, _ = principal(tok, &cfg)
		is := &issuer{cfg: cfg}
		_ = is.precheck(tok)
	})
}
