package verify

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/aigov/aigov/schemas"
)

// maxConfigBytes bounds the issuer file; real ones are a few KB.
const maxConfigBytes = 1 << 20

// fileConfig is the AIGOV_OIDC_CONFIG document. YAML is read strictly
// (unknown keys are errors), and JSON is valid YAML.
type fileConfig struct {
	Issuers []fileIssuer `yaml:"issuers"`
}

// fileIssuer is one issuer in the file; see Issuer for each field.
type fileIssuer struct {
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
	Claims            fileClaims          `yaml:"claims"`
}

type fileClaims struct {
	Groups      string            `yaml:"groups"`
	Scopes      []string          `yaml:"scopes"`
	Email       string            `yaml:"email"`
	Name        string            `yaml:"name"`
	PrincipalID string            `yaml:"principal_id"`
	Attributes  map[string]string `yaml:"attributes"`
}

// Workload presets.
const (
	PresetKubernetes    = "kubernetes"
	PresetGitHubActions = "github-actions"
)

// presets fill the mapping of well-known workload identity issuers; the
// file's own values win.
var presets = map[string]Issuer{
	PresetKubernetes: {
		PrincipalType: schemas.PrincipalWorkload,
		Claims: ClaimMapping{Attributes: map[string]string{
			"namespace":          "kubernetes.io.namespace",
			"serviceaccount":     "kubernetes.io.serviceaccount.name",
			"serviceaccount_uid": "kubernetes.io.serviceaccount.uid",
			"pod":                "kubernetes.io.pod.name",
			"pod_uid":            "kubernetes.io.pod.uid",
		}},
	},
	PresetGitHubActions: {
		PrincipalType: schemas.PrincipalWorkload,
		Claims: ClaimMapping{Attributes: map[string]string{
			"repository":          "repository",
			"repository_id":       "repository_id",
			"repository_owner":    "repository_owner",
			"repository_owner_id": "repository_owner_id",
			"workflow":            "workflow",
			"job_workflow_ref":    "job_workflow_ref",
			"ref":                 "ref",
			"sha":                 "sha",
			"environment":         "environment",
			"event_name":          "event_name",
			"actor":               "actor",
			"run_id":              "run_id",
		}},
	},
}

// LoadIssuersFile reads the issuers of an AIGOV_OIDC_CONFIG file (YAML or
// JSON) and validates them, reporting every violation.
func LoadIssuersFile(path string) ([]Issuer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read issuer config: %w", err)
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("issuer config %s is larger than %d bytes", path, maxConfigBytes)
	}
	return ParseIssuers(b)
}

// ParseIssuers parses an issuer config document (YAML or JSON).
func ParseIssuers(b []byte) ([]Issuer, error) {
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil {
		return nil, fmt.Errorf("parse issuer config: %w", err)
	}
	if len(fc.Issuers) == 0 {
		return nil, errors.New("issuer config lists no issuers")
	}
	var errs []error
	out := make([]Issuer, 0, len(fc.Issuers))
	for _, fi := range fc.Issuers {
		is, err := fi.issuer()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, is)
	}
	if err := validateIssuers(out); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (fi fileIssuer) issuer() (Issuer, error) {
	is := Issuer{
		URL:               fi.URL,
		Audiences:         fi.Audiences,
		AuthorizedParties: fi.AuthorizedParties,
		Algorithms:        fi.Algorithms,
		PrincipalType:     fi.PrincipalType,
		Tenant:            fi.Tenant,
		TokenTypes:        fi.TokenTypes,
		Require:           fi.Require,
		MFAACRValues:      fi.MFAACRValues,
		ReplayProtection:  fi.ReplayProtection,
		Preset:            fi.Preset,
		Claims: ClaimMapping{
			Groups: fi.Claims.Groups, Scopes: fi.Claims.Scopes, Email: fi.Claims.Email, Name: fi.Claims.Name,
			PrincipalID: fi.Claims.PrincipalID, Attributes: fi.Claims.Attributes,
		},
	}
	if fi.Preset == "" {
		return is, nil
	}
	p, ok := presets[fi.Preset]
	if !ok {
		return Issuer{}, fmt.Errorf("issuer %q: unknown preset %q (want %s or %s)", fi.URL, fi.Preset, PresetKubernetes, PresetGitHubActions)
	}
	if is.PrincipalType == "" {
		is.PrincipalType = p.PrincipalType
	}
	attrs := make(map[string]string, len(p.Claims.Attributes)+len(is.Claims.Attributes))
	for k, v := range p.Claims.Attributes {
		attrs[k] = v
	}
	for k, v := range is.Claims.Attributes {
		attrs[k] = v
	}
	is.Claims.Attributes = attrs
	return is, nil
}
