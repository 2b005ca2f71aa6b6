package generate

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// PoliciesConfigMapFile mounts policies/ into the policy Deployment.
const PoliciesConfigMapFile = "deploy/k8s/base/policies-configmap.yaml"

// PolicyFiles are the files of policies/ the policy service reads, by name.
func PolicyFiles(root string) (map[string]string, error) {
	dir := filepath.Join(root, "policies")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !(strings.HasSuffix(n, ".cedar") || strings.HasSuffix(n, ".cedarschema") || n == "entities.json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("policies: %w", err)
		}
		out[n] = string(b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no policies in %s", dir)
	}
	return out, nil
}

// PoliciesConfigMap holds exactly the files of policies/ the service reads,
// byte for byte (the policy set's version hashes them).
func PoliciesConfigMap(root string) ([]Output, error) {
	files, err := PolicyFiles(root)
	if err != nil {
		return nil, err
	}
	data := &yaml.Node{Kind: yaml.MappingNode}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		data.Content = append(data.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: n},
			&yaml.Node{Kind: yaml.ScalarNode, Value: files[n], Style: yaml.LiteralStyle})
	}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "apiVersion"}, {Kind: yaml.ScalarNode, Value: "v1"},
		{Kind: yaml.ScalarNode, Value: "kind"}, {Kind: yaml.ScalarNode, Value: "ConfigMap"},
		{Kind: yaml.ScalarNode, Value: "metadata"}, {Kind: yaml.MappingNode, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Value: "name"}, {Kind: yaml.ScalarNode, Value: "aigov-policies"}}},
		{Kind: yaml.ScalarNode, Value: "data"}, data,
	}}
	var b bytes.Buffer
	b.WriteString(`# GENERATED from policies/ (the *.cedar files, the *.cedarschema schema and
# entities.json) by services/devstack/internal/generate; do not edit.
# After changing a policy, regenerate:
#   make generate
# The policy service reads them from AIGOV_POLICY_DIR, where policy.yaml
# mounts this ConfigMap.
`)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode the policies ConfigMap: %w", err)
	}
	return []Output{{Path: PoliciesConfigMapFile, Content: b.Bytes(), From: "policies/"}}, nil
}

// The approval webhooks: the compose files, and their copy in the dev
// overlay's Secret.
const (
	WebhooksDir    = "deploy/policy/approval-webhooks"
	WebhooksK8sDir = "deploy/k8s/overlays/dev/approval-webhooks"
)

// Webhooks copies each file of WebhooksDir but its README into
// WebhooksK8sDir, where kustomize makes the Secret of them.
func Webhooks(root string) ([]Output, error) {
	entries, err := os.ReadDir(filepath.Join(root, WebhooksDir))
	if err != nil {
		return nil, fmt.Errorf("approval webhooks: %w", err)
	}
	var out []Output
	for _, e := range entries {
		if e.Name() == "README.md" || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, WebhooksDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("approval webhooks: %w", err)
		}
		out = append(out, Output{Path: WebhooksK8sDir + "/" + e.Name(), Content: b, From: WebhooksDir + "/" + e.Name()})
	}
	return out, nil
}
