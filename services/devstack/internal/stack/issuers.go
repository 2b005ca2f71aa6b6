package stack

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

// maxIssuersBytes bounds the extra issuers file, as authn bounds its own.
const maxIssuersBytes = 1 << 20

// issuersFile writes authn's AIGOV_OIDC_CONFIG for a stack with extra
// issuers: the dev IdP first, then every issuer of the user's file as it
// stands (authn checks each field strictly when it starts). It returns the
// written file's path.
func (st *Stack) issuersFile(extra string) (string, error) {
	raw, err := os.ReadFile(extra)
	if err != nil {
		return "", fmt.Errorf("stack: issuers file: %w", err)
	}
	if len(raw) > maxIssuersBytes {
		return "", fmt.Errorf("stack: issuers file %s is larger than %d bytes", extra, maxIssuersBytes)
	}
	var doc struct {
		Issuers []map[string]any `yaml:"issuers"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return "", fmt.Errorf("stack: issuers file %s: want a document with an issuers list (as AIGOV_OIDC_CONFIG): %w", extra, err)
	}
	if len(doc.Issuers) == 0 {
		return "", fmt.Errorf("stack: issuers file %s lists no issuers", extra)
	}
	for i, iss := range doc.Issuers {
		url, _ := iss["url"].(string)
		if url == "" {
			return "", fmt.Errorf("stack: issuers file %s: issuer %d has no url", extra, i+1)
		}
		if url == st.IdP.Issuer() {
			return "", errors.New("stack: issuers file names the dev IdP, which the stack trusts already")
		}
	}
	dev := map[string]any{"url": st.IdP.Issuer(), "audiences": []string{st.IdP.ClientID()}}
	doc.Issuers = append([]map[string]any{dev}, doc.Issuers...)
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("stack: issuers file: %w", err)
	}
	path := filepath.Join(st.Dir, "authn-issuers.yaml")
	if err := os.WriteFile(path, append([]byte("# Written by the dev stack: its own IdP, then "+extra+".\n"), out...), 0o600); err != nil {
		return "", fmt.Errorf("stack: issuers file: %w", err)
	}
	return path, nil
}
