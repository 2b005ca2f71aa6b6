package verify

import (
	"errors"
	"fmt"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/oidcfile"
)

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
	d, err := oidcfile.Read(path)
	if err != nil {
		return nil, err
	}
	return issuersOf(d)
}

// ParseIssuers parses an issuer config document (YAML or JSON).
func ParseIssuers(b []byte) ([]Issuer, error) {
	d, err := oidcfile.Parse(b)
	if err != nil {
		return nil, err
	}
	return issuersOf(d)
}

func issuersOf(d oidcfile.Document) ([]Issuer, error) {
	var errs []error
	out := make([]Issuer, 0, len(d.Issuers))
	for _, fi := range d.Issuers {
		is, err := issuerOf(fi)
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

func issuerOf(fi oidcfile.Issuer) (Issuer, error) {
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
