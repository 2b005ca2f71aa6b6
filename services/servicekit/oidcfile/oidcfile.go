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

// Env is what Load reads the two settings through (servicekit.Env).
type Env interface {
	String(key string) string
	List(key string) []string
	Fail(format string, args ...any)
}

// Load reads the trusted issuers the way authn and the reaper both must:
// the AIGOV_OIDC_CONFIG file, or the AIGOV_OIDC_ISSUERS list, never both.
// It returns the file's document (fromFile) or the list; a bad file, both
// set, or (when required) neither is recorded on e.
func Load(e Env, required string) (d Document, urls []string, fromFile bool) {
	file := e.String("AIGOV_OIDC_CONFIG")
	urls = e.List("AIGOV_OIDC_ISSUERS")
	switch {
	case file != "" && len(urls) > 0:
		e.Fail("set AIGOV_OIDC_CONFIG or AIGOV_OIDC_ISSUERS, not both")
		return Document{}, nil, false
	case file != "":
		d, err := Read(file)
		if err != nil {
			e.Fail("AIGOV_OIDC_CONFIG: %v", err)
		}
		return d, nil, err == nil
	case len(urls) == 0 && required != "":
		e.Fail("%s", required)
	}
	return Document{}, urls, false
}
