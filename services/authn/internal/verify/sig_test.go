package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// TestVerifyJWS: every allowed algorithm verifies a token signed by
// go-jose (a maintained library), and refuses a tampered payload or
// signature, a key of another type or curve, and a wrongly sized ECDSA
// signature.
func TestVerifyJWS(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec := func(c elliptic.Curve) *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	p256, p384, p521 := ec(elliptic.P256()), ec(elliptic.P384()), ec(elliptic.P521())
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		alg   jose.SignatureAlgorithm
		priv  any
		pub   crypto.PublicKey
		wrong crypto.PublicKey // right type family, wrong key or curve
	}{
		{jose.RS256, rsaKey, &rsaKey.PublicKey, &p256.PublicKey},
		{jose.RS384, rsaKey, &rsaKey.PublicKey, edPub},
		{jose.RS512, rsaKey, &rsaKey.PublicKey, &p521.PublicKey},
		{jose.PS256, rsaKey, &rsaKey.PublicKey, &p256.PublicKey},
		{jose.PS384, rsaKey, &rsaKey.PublicKey, &p384.PublicKey},
		{jose.PS512, rsaKey, &rsaKey.PublicKey, edPub},
		{jose.ES256, p256, &p256.PublicKey, &p384.PublicKey},
		{jose.ES384, p384, &p384.PublicKey, &p256.PublicKey},
		{jose.ES512, p521, &p521.PublicKey, &rsaKey.PublicKey},
		{jose.EdDSA, edKey, edPub, &p256.PublicKey},
	}
	for _, tc := range cases {
		t.Run(string(tc.alg), func(t *testing.T) {
			tok := sign(t, tc.alg, tc.priv, "k", map[string]any{"iss": "https://idp.example", "sub": "alice"})
			parsed, d := parseToken(tok)
			if d != nil {
				t.Fatal(d)
			}
			alg := string(tc.alg)
			if !verifyJWS(alg, tc.pub, parsed.signingInput, parsed.sig) {
				t.Fatal("a good signature does not verify")
			}
			if verifyJWS(alg, tc.wrong, parsed.signingInput, parsed.sig) {
				t.Fatal("verifies with a key of another type or curve")
			}
			tampered := parsed.signingInput[:len(parsed.signingInput)-2] + "xx"
			if verifyJWS(alg, tc.pub, tampered, parsed.sig) {
				t.Fatal("verifies a tampered payload")
			}
			sig := append([]byte(nil), parsed.sig...)
			sig[len(sig)/2] ^= 1
			if verifyJWS(alg, tc.pub, parsed.signingInput, sig) {
				t.Fatal("verifies a tampered signature")
			}
			if verifyJWS(alg, tc.pub, parsed.signingInput, append(parsed.sig, 0)) {
				t.Fatal("verifies a signature with a trailing byte")
			}
			if strings.HasPrefix(alg, "ES") && verifyJWS(alg, tc.pub, parsed.signingInput, parsed.sig[1:]) {
				t.Fatal("verifies a short ECDSA signature")
			}
			for _, other := range []string{"HS256", "none", "RS1", ""} {
				if verifyJWS(other, tc.pub, parsed.signingInput, parsed.sig) {
					t.Fatalf("alg %q verifies", other)
				}
			}
		})
	}
}
