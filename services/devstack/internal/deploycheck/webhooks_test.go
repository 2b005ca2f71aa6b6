package deploycheck

import (
	"bytes"
	"encoding/json"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// The approval webhooks file compose mounts for the policy service, and
// the Kubernetes dev overlay's generated copy.
const (
	webhooksDir     = generate.WebhooksDir
	webhooksMount   = "/etc/aigov/approval-webhooks"
	webhooksSecret  = "aigov-approval-webhooks"
	webhooksFile    = "webhooks.json"
	webhooksMinKey  = 16 // notify's minimum secret length
	webhooksFormats = ",json,slack,"
)

// checkWebhooksFile reads a webhooks file as the policy service does
// (notify.LoadFile): every team has an http(s) URL, a format it knows, and
// a secret_file that resolve maps to a file holding at least 16 bytes.
func checkWebhooksFile(t *testing.T, where string, b []byte, resolve func(string) (string, bool)) {
	t.Helper()
	var hooks map[string]struct {
		URL        string `json:"url"`
		SecretFile string `json:"secret_file"`
		Format     string `json:"format"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hooks); err != nil || len(hooks) == 0 {
		t.Fatalf("%s: not a team -> webhook object (%v): %s", where, err, b)
	}
	for team, h := range hooks {
		if u, err := url.Parse(h.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			t.Errorf("%s: team %s: url %q is not an http(s) URL", where, team, h.URL)
		}
		if !strings.Contains(webhooksFormats, ","+h.Format+",") {
			t.Errorf("%s: team %s: format %q", where, team, h.Format)
		}
		host, ok := resolve(h.SecretFile)
		if !ok {
			t.Errorf("%s: team %s: secret_file %s is not in a mounted directory", where, team, h.SecretFile)
			continue
		}
		if s, err := os.ReadFile(host); err != nil || len(bytes.TrimSpace(s)) < webhooksMinKey {
			t.Errorf("%s: team %s: secret %s: %v, %d bytes (at least %d)", where, team, host, err, len(bytes.TrimSpace(s)), webhooksMinKey)
		}
	}
}

// Compose mounts the approval webhooks directory for the policy service,
// and AIGOV_APPROVAL_WEBHOOKS_FILE names a file in it that the policy
// service would load: it refuses to start on a broken one.
func TestComposeApprovalWebhooks(t *testing.T) {
	policy := compose(t).service(t, "policy")
	file := policy.Environment["AIGOV_APPROVAL_WEBHOOKS_FILE"]
	mounts := policy.mounts()
	resolve := func(p string) (string, bool) {
		for c, host := range mounts {
			if rel, err := filepath.Rel(c, p); err == nil && !strings.HasPrefix(rel, "..") && filepath.IsAbs(host) {
				return filepath.Join(host, rel), true
			}
		}
		return "", false
	}
	if mounts[webhooksMount] != repoPath(t, webhooksDir) || path.Dir(file) != webhooksMount {
		t.Fatalf("policy AIGOV_APPROVAL_WEBHOOKS_FILE=%q, mounts %v: want a file of %s mounted at %s", file, policy.Volumes, webhooksDir, webhooksMount)
	}
	host, _ := resolve(file)
	b, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	checkWebhooksFile(t, "docker-compose.yml policy "+file, b, resolve)
}

// The dev overlay's Secret aigov-approval-webhooks holds a copy of the
// compose files (make generate copies them), and the policy Deployment
// mounts it where its AIGOV_APPROVAL_WEBHOOKS_FILE points.
func TestK8sApprovalWebhooks(t *testing.T) {
	entries, err := os.ReadDir(repoPath(t, webhooksDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() == "README.md" {
			continue
		}
		names = append(names, e.Name())
	}
	outs, err := generate.Webhooks(repoRoot(t))
	checkGenerated(t, outs, err)

	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	files := g.secretFiles[webhooksSecret]
	if len(files) != len(names) {
		t.Errorf("Secret %s has keys %v, want one per file of %s: %v", webhooksSecret, sortedKeys(files), webhooksDir, names)
	}
	for _, n := range names {
		if files[n] != "" && path.Base(files[n]) != n {
			t.Errorf("Secret %s key %s is made from %s", webhooksSecret, n, files[n])
		}
	}
	var w workload
	find(t, ms, "Deployment", "aigov-policy").decode(t, &w)
	spec := w.Spec.Template.Spec
	vol := ""
	for _, v := range spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == webhooksSecret {
			vol = v.Name
		}
	}
	c := spec.Containers[0]
	file, mounted := "", false
	for _, e := range c.Env {
		if e.Name == "AIGOV_APPROVAL_WEBHOOKS_FILE" {
			file = e.Value
		}
	}
	for _, m := range c.VolumeMounts {
		if m.Name == vol && vol != "" && m.MountPath == path.Dir(file) && m.ReadOnly {
			mounted = true
		}
	}
	if !mounted || path.Base(file) != webhooksFile {
		t.Fatalf("aigov-policy: AIGOV_APPROVAL_WEBHOOKS_FILE=%q is not %s of the Secret %s mounted read-only (volume %q)", file, webhooksFile, webhooksSecret, vol)
	}
	checkWebhooksFile(t, "Secret "+webhooksSecret, readFile(t, files[webhooksFile]), func(p string) (string, bool) {
		if path.Dir(p) != path.Dir(file) || files[path.Base(p)] == "" {
			return "", false
		}
		return repoPath(t, files[path.Base(p)]), true
	})
}
