// Package oidcfile reads the trusted-issuer file (AIGOV_OIDC_CONFIG). authn
// turns it into verifiers; the reaper's back-channel logout reads the same
// file, so issuers configured by file are trusted for logout too.
package oidcfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"
)

// MaxBytes bounds the file; real ones are a few KB.
const MaxBytes = 1 << 20

// Document is the AIGOV_OIDC_CONFIG document. YAML is read strictly (unknown
// keys are errors), and JSON is valid YAML.
type Document struct {
	Issuers []Issuer `yaml:"issuers"`
}

// Issuer is one trusted issuer; authn's verify.Issuer documents each field.
type Issuer struct {
	URL               string              `yaml:"url"`
	Audiences         []string            `yaml:"audiences"`
	AuthorizedParties []string            `yaml:"authorized_parties"`
	Algorithms        []string            `yaml:"algorithms"`
	PrincipalType     string              `yaml:"principal_type"`
	Preset            string              `yaml:"preset"`
	Tenant            string              `yaml:"tenant"`
	TokenTypes        []string            `yaml:"token_types"`
	Require           map[string][]string `yaml:"require"`
	MFAACRValues      []string            `yaml:"mfa_acr_values"`
	ReplayProtection  bool                `yaml:"replay_protection"`
	Claims            Claims              `yaml:"claims"`
}

// Claims maps the issuer's claim names onto aigov's principal.
type Claims struct {
	Groups      string            `yaml:"groups"`
	Scopes      []string          `yaml:"scopes"`
	Email       string            `yaml:"email"`
	Name        string            `yaml:"name"`
	PrincipalID string            `yaml:"principal_id"`
	Attributes  map[string]string `yaml:"attributes"`
}

// Read reads and parses the file at path.
func Read(path string) (Document, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Document{}, fmt.Errorf("read issuer config: %w", err)
	}
	if len(b) > MaxBytes {
		return Document{}, fmt.Errorf("issuer config %s is larger than %d bytes", path, MaxBytes)
	}
	return Parse(b)
}

// Parse parses a document; it checks the shape only (authn validates each
// issuer's settings).
func Parse(b []byte) (Document, error) {
	var d Document
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		return Document{}, fmt.Errorf("parse issuer config: %w", err)
	}
	if len(d.Issuers) == 0 {
		return Document{}, errors.New("issuer config lists no issuers")
	}
	return d, nil
}
