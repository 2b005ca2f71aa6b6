package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"math/big"
	"unsafe"

	// Registered for crypto.Hash.New.
	_ "crypto/sha256"
	_ "crypto/sha512"
)

// verifyJWS reports whether sig is a valid alg signature by key over the
// JWS signing input (the token up to its last dot). It does what go-jose's
// JSONWebSignature.Verify does once the token is parsed, without parsing
// the token again: aigov has already decoded and checked the header and
// payload (parseToken), and a second parse was a tenth of an ES256
// verification. alg is one of asymmetricAlgs; a key of the wrong type or
// curve for alg never verifies.
func verifyJWS(alg string, key any, signingInput string, sig []byte) bool {
	// Hash the string's bytes in place: hashes only read them.
	in := unsafe.Slice(unsafe.StringData(signingInput), len(signingInput))
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		pub, ok := key.(*rsa.PublicKey)
		if !ok {
			return false
		}
		h := hashOf(alg)
		d := digest(h, in)
		if alg[0] == 'P' {
			// nil options: salt length auto-detected, as go-jose verifies.
			return rsa.VerifyPSS(pub, h, d, sig, nil) == nil
		}
		return rsa.VerifyPKCS1v15(pub, h, d, sig) == nil
	case "ES256", "ES384", "ES512":
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		var curve elliptic.Curve
		var size int
		switch alg {
		case "ES256":
			curve, size = elliptic.P256(), 32
		case "ES384":
			curve, size = elliptic.P384(), 48
		default:
			curve, size = elliptic.P521(), 66
		}
		// RFC 7518 §3.4: the signature is R and S, each exactly size bytes.
		if pub.Curve != curve || len(sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(pub, digest(hashOf(alg), in), r, s)
	case "EdDSA":
		pub, ok := key.(ed25519.PublicKey)
		return ok && len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, in, sig)
	}
	return false
}

// hashOf returns the hash an RSA or ECDSA JWS algorithm signs with.
func hashOf(alg string) crypto.Hash {
	switch alg[2:] {
	case "384":
		return crypto.SHA384
	case "512":
		return crypto.SHA512
	}
	return crypto.SHA256
}

// digest hashes b with h.
func digest(h crypto.Hash, b []byte) []byte {
	w := h.New()
	w.Write(b)
	return w.Sum(nil)
}
