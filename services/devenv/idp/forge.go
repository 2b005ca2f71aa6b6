package idp

// This file is the test/demo-only forgery helper. It is deliberately separate
// from the provider: everything in idp.go obtains tokens through the
// provider's real endpoints, while Forge produces tokens that MUST be
// rejected.

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// forgeableAlgs are the RSA algorithms Forge can re-sign with a fresh RSA
// key; the provider only issues RS256, the others cost nothing to accept.
var forgeableAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
}

// Forge returns token's payload byte for byte, under the same alg, kid and
// other protected header fields (typ, ...), re-signed with a freshly generated
// RSA key. It models an attacker who copies a real token, edits nothing
// visible and signs it with a key of their own while claiming the IdP's
// kid: the result looks right in every field, is unexpired if the input
// was, and only signature verification against the IdP's JWKS can reject
// it. token is not verified; Forge only needs to parse it.
func Forge(token string) (string, error) {
	jws, err := jose.ParseSigned(token, forgeableAlgs)
	if err != nil {
		return "", fmt.Errorf("idp: forge: parse: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return "", errors.New("idp: forge: want exactly one signature")
	}
	h := jws.Signatures[0].Protected

	key, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return "", fmt.Errorf("idp: forge: generate key: %w", err)
	}
	opts := &jose.SignerOptions{}
	for k, v := range h.ExtraHeaders {
		opts.WithHeader(k, v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.SignatureAlgorithm(h.Algorithm),
		// A JSONWebKey with KeyID makes go-jose emit the same `kid`, so a
		// verifier picks the IdP's real key for it and must fail on the
		// signature rather than on an unknown key.
		Key: jose.JSONWebKey{Key: key, KeyID: h.KeyID, Algorithm: h.Algorithm},
	}, opts)
	if err != nil {
		return "", fmt.Errorf("idp: forge: signer: %w", err)
	}
	obj, err := signer.Sign(jws.UnsafePayloadWithoutVerification())
	if err != nil {
		return "", fmt.Errorf("idp: forge: sign: %w", err)
	}
	return obj.CompactSerialize()
}

// Rekey returns token's payload signed with a fresh RSA key under a new
// kid, as if the IdP had rotated to a key no verifier has seen: a
// verifier must fetch the JWKS to judge it (and, the key being in no
// JWKS, deny it).
func Rekey(token string) (string, error) {
	jws, err := jose.ParseSigned(token, forgeableAlgs)
	if err != nil {
		return "", fmt.Errorf("idp: rekey: parse: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return "", errors.New("idp: rekey: want exactly one signature")
	}
	key, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return "", fmt.Errorf("idp: rekey: generate key: %w", err)
	}
	kid, err := randomString()
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: "rotated-" + kid, Algorithm: string(jose.RS256)}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("idp: rekey: signer: %w", err)
	}
	obj, err := signer.Sign(jws.UnsafePayloadWithoutVerification())
	if err != nil {
		return "", fmt.Errorf("idp: rekey: sign: %w", err)
	}
	return obj.CompactSerialize()
}
