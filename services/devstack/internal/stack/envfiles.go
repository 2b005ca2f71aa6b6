package stack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
)

// WriteTokens writes a fresh token of every dev persona to dir/<name>.jwt,
// the files the README's and the demo's commands present.
func (st *Stack) WriteTokens(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write tokens: %w", err)
	}
	for name := range idp.Personas() {
		tok, err := st.IdP.Token(ctx, name)
		if err != nil {
			return fmt.Errorf("write tokens: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".jwt"), []byte(tok), 0o600); err != nil {
			return fmt.Errorf("write tokens: %w", err)
		}
	}
	return nil
}

// WriteEnvFiles writes one file per NATS role with everything a client
// needs to act as that role against the dev stack, for the aigov CLI (which
// reads these variables) and the plain nats CLI (--tlsca "$AIGOV_NATS_TLS_CA"):
// the URL, the user and its dev password (generated at start), and the dev
// CA the server's certificate chains to, the trust file of the services'
// public keys and, for a role that signs events, its signing key.
func WriteEnvFiles(ns natsdev.Bus, keys *devkeys.Set, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, role := range schemas.Roles() {
		if err := os.WriteFile(filepath.Join(dir, role+".env"), []byte(EnvFile(ns, keys, role)), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// EnvFile is the content of .run/env/<role>.env: AIGOV_NATS_URL, then the
// role's credentials (user and password, or its client certificate when
// the server maps users from certificates), then AIGOV_NATS_TLS_CA, then
// AIGOV_TRUST_FILE and, for a role that signs, AIGOV_SIGNING_KEY.
func EnvFile(ns natsdev.Bus, keys *devkeys.Set, role string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "AIGOV_NATS_URL=%s\nAIGOV_NATS_USER=%s\n", ns.URL(), role)
	if pw := ns.Password(role); pw != "" {
		fmt.Fprintf(&b, "AIGOV_NATS_PASSWORD=%s\n", pw)
	}
	if cert, key := ns.ClientCert(role); cert != "" {
		fmt.Fprintf(&b, "AIGOV_NATS_TLS_CERT=%s\nAIGOV_NATS_TLS_KEY=%s\n", cert, key)
	}
	fmt.Fprintf(&b, "AIGOV_NATS_TLS_CA=%s\n", ns.CAFile())
	fmt.Fprintf(&b, "AIGOV_TRUST_FILE=%s\n", keys.TrustFile)
	if slices.Contains(devkeys.Roles, role) {
		fmt.Fprintf(&b, "AIGOV_SIGNING_KEY=%s\n", keys.KeyFile(role))
	}
	return b.String()
}
