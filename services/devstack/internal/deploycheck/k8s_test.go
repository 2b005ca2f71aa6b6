package deploycheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/aigov/aigov/services/devstack/internal/generate"
)

const k8sDir = "deploy/k8s"

// knownKinds are the apiVersion/kind pairs the manifests may use.
var knownKinds = map[string][]string{
	"v1":                                {"ConfigMap", "Namespace", "Secret", "Service", "ServiceAccount"},
	"apps/v1":                           {"Deployment", "StatefulSet"},
	"batch/v1":                          {"Job"},
	"policy/v1":                         {"PodDisruptionBudget"},
	"networking.k8s.io/v1":              {"NetworkPolicy"},
	"kustomize.config.k8s.io/v1beta1":   {"Kustomization"},
	"clickhouse.altinity.com/v1":        {"ClickHouseInstallation"},
	"clickhouse-keeper.altinity.com/v1": {"ClickHouseKeeperInstallation"},
	"cert-manager.io/v1":                {"Issuer", "Certificate"},
}

// manifest is one YAML document under deploy/k8s.
type manifest struct {
	file string // relative to the repository root
	raw  map[string]any
	node yaml.Node
}

func (m manifest) kind() string       { s, _ := m.raw["kind"].(string); return s }
func (m manifest) apiVersion() string { s, _ := m.raw["apiVersion"].(string); return s }
func (m manifest) name() string {
	md, _ := m.raw["metadata"].(map[string]any)
	s, _ := md["name"].(string)
	return s
}
func (m manifest) decode(t testing.TB, v any) {
	t.Helper()
	if err := m.node.Decode(v); err != nil {
		t.Fatalf("%s %s/%s: %v", m.file, m.kind(), m.name(), err)
	}
}

// loadManifests parses every *.yaml under deploy/k8s, every document of it.
func loadManifests(t testing.TB) []manifest {
	t.Helper()
	var out []manifest
	base := repoPath(t, k8sDir)
	// Files a kustomization turns into a ConfigMap are data, not manifests.
	data := map[string]bool{}
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "kustomization.yaml" {
			return err
		}
		var k kustomization
		b, err := os.ReadFile(p)
		if err == nil {
			err = yaml.Unmarshal(b, &k)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, c := range k.ConfigMapGenerator {
			for _, f := range c.Files {
				data[filepath.Join(filepath.Dir(p), generatorFile(f))] = true
			}
		}
		for _, s := range k.SecretGenerator {
			for _, f := range s.Files {
				data[filepath.Join(filepath.Dir(p), generatorFile(f))] = true
			}
		}
		// Patches are partial objects; TestK8sAuditWaitsForSchema reads the
		// one there is.
		for _, pt := range k.Patches {
			data[filepath.Join(filepath.Dir(p), pt.Path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") || data[p] {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot(t), p)
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for i := 0; ; i++ {
			var n yaml.Node
			if err := dec.Decode(&n); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("%s document %d: %w", rel, i+1, err)
			}
			var raw map[string]any
			if err := n.Decode(&raw); err != nil {
				return fmt.Errorf("%s document %d: %w", rel, i+1, err)
			}
			if raw == nil {
				continue
			}
			out = append(out, manifest{file: filepath.ToSlash(rel), raw: raw, node: n})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no manifests under deploy/k8s")
	}
	return out
}

func byKind(ms []manifest, kind string) []manifest {
	var out []manifest
	for _, m := range ms {
		if m.kind() == kind {
			out = append(out, m)
		}
	}
	return out
}

func find(t testing.TB, ms []manifest, kind, name string) manifest {
	t.Helper()
	for _, m := range ms {
		if m.kind() == kind && m.name() == name {
			return m
		}
	}
	t.Fatalf("no %s %q under deploy/k8s", kind, name)
	return manifest{}
}

// Kubernetes object shapes, only the fields the checks read.
type (
	envVar struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
			ConfigMapKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"configMapKeyRef"`
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
		TCPSocket *struct {
			Port any `yaml:"port"`
		} `yaml:"tcpSocket"`
	}
	secCtx struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		RunAsUser                *int  `yaml:"runAsUser"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             *struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	}
	container struct {
		Name    string   `yaml:"name"`
		Image   string   `yaml:"image"`
		Command []string `yaml:"command"`
		Args    []string `yaml:"args"`
		Ports   []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		Env     []envVar `yaml:"env"`
		EnvFrom []struct {
			ConfigMapRef *struct {
				Name string `yaml:"name"`
			} `yaml:"configMapRef"`
			SecretRef *struct {
				Name string `yaml:"name"`
			} `yaml:"secretRef"`
		} `yaml:"envFrom"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext *secCtx       `yaml:"securityContext"`
		VolumeMounts    []volumeMount `yaml:"volumeMounts"`
	}
	volumeMount struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	}
	keyToPath struct {
		Key  string `yaml:"key"`
		Path string `yaml:"path"`
	}
	podSpec struct {
		SecurityContext *secCtx     `yaml:"securityContext"`
		Containers      []container `yaml:"containers"`
		Volumes         []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name  string      `yaml:"name"`
				Items []keyToPath `yaml:"items"`
			} `yaml:"configMap"`
			Secret *struct {
				SecretName string      `yaml:"secretName"`
				Items      []keyToPath `yaml:"items"`
			} `yaml:"secret"`
		} `yaml:"volumes"`
	}
	workload struct {
		Spec struct {
			Replicas    *int   `yaml:"replicas"`
			ServiceName string `yaml:"serviceName"`
			Selector    struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec podSpec `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	kustomization struct {
		Namespace          string   `yaml:"namespace"`
		Resources          []string `yaml:"resources"`
		ConfigMapGenerator []struct {
			Name     string   `yaml:"name"`
			Literals []string `yaml:"literals"`
			Files    []string `yaml:"files"`
		} `yaml:"configMapGenerator"`
		SecretGenerator []struct {
			Name     string   `yaml:"name"`
			Literals []string `yaml:"literals"`
			Files    []string `yaml:"files"`
		} `yaml:"secretGenerator"`
		Patches []struct {
			Path string `yaml:"path"`
		} `yaml:"patches"`
	}
)

// generated collects what the kustomizations generate: ConfigMap literals
// and files, and Secret literals and files, by name.
type generated struct {
	configMaps  map[string]map[string]string // name -> key -> value ("" for files)
	secrets     map[string]map[string]string
	secretFiles map[string]map[string]string // name -> key -> file, relative to the repository root
	// configMapFiles: name -> key -> file, relative to the repository root.
	configMapFiles map[string]map[string]string
}

// generatorKey and generatorFile split a generator's files entry, "file"
// or "key=file".
func generatorKey(entry string) string {
	if k, _, ok := strings.Cut(entry, "="); ok {
		return k
	}
	return path.Base(entry)
}

func generatorFile(entry string) string {
	if _, f, ok := strings.Cut(entry, "="); ok {
		return f
	}
	return entry
}

func loadGenerated(t testing.TB, ms []manifest) generated {
	t.Helper()
	g := generated{configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{}, secretFiles: map[string]map[string]string{},
		configMapFiles: map[string]map[string]string{}}
	lit := func(dst map[string]string, l string) {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("generator literal %q is not KEY=value", l)
		}
		dst[k] = v
	}
	for _, m := range byKind(ms, "Kustomization") {
		var k kustomization
		m.decode(t, &k)
		for _, c := range k.ConfigMapGenerator {
			if g.configMaps[c.Name] == nil {
				g.configMaps[c.Name] = map[string]string{}
			}
			for _, l := range c.Literals {
				lit(g.configMaps[c.Name], l)
			}
			if g.configMapFiles[c.Name] == nil {
				g.configMapFiles[c.Name] = map[string]string{}
			}
			for _, f := range c.Files {
				g.configMaps[c.Name][generatorKey(f)] = ""
				g.configMapFiles[c.Name][generatorKey(f)] = path.Join(path.Dir(m.file), generatorFile(f))
			}
		}
		for _, s := range k.SecretGenerator {
			if g.secrets[s.Name] == nil {
				g.secrets[s.Name] = map[string]string{}
				g.secretFiles[s.Name] = map[string]string{}
			}
			for _, l := range s.Literals {
				lit(g.secrets[s.Name], l)
			}
			for _, f := range s.Files {
				g.secrets[s.Name][generatorKey(f)] = ""
				g.secretFiles[s.Name][generatorKey(f)] = path.Join(path.Dir(m.file), generatorFile(f))
			}
		}
	}
	// cert-manager makes each Certificate's Secret, with these keys.
	for _, m := range byKind(ms, "Certificate") {
		var c struct {
			Spec struct {
				SecretName string `yaml:"secretName"`
			} `yaml:"spec"`
		}
		m.decode(t, &c)
		g.secrets[c.Spec.SecretName] = map[string]string{"tls.crt": "", "tls.key": "", "ca.crt": ""}
	}
	for _, m := range byKind(ms, "ConfigMap") {
		var cm struct {
			Data map[string]string `yaml:"data"`
		}
		m.decode(t, &cm)
		g.configMaps[m.name()] = cm.Data
	}
	return g
}

// Every document has an apiVersion, kind and name the checks know, and
// every kustomization lists existing files and no manifest is left out.
func TestK8sManifestsParse(t *testing.T) {
	ms := loadManifests(t)
	listed := map[string]bool{}
	for _, m := range ms {
		kinds, ok := knownKinds[m.apiVersion()]
		if !ok || !slices.Contains(kinds, m.kind()) {
			t.Errorf("%s: unknown apiVersion %q kind %q", m.file, m.apiVersion(), m.kind())
		}
		if m.kind() != "Kustomization" && m.name() == "" {
			t.Errorf("%s: %s without metadata.name", m.file, m.kind())
		}
		if m.kind() != "Kustomization" {
			if _, ok := m.raw["spec"]; !ok && !slices.Contains([]string{"ConfigMap", "Namespace", "Secret", "ServiceAccount"}, m.kind()) {
				t.Errorf("%s: %s %s has no spec", m.file, m.kind(), m.name())
			}
			continue
		}
		var k kustomization
		m.decode(t, &k)
		dir := path.Dir(m.file)
		for _, r := range k.Resources {
			p := path.Join(dir, r)
			st, err := os.Stat(repoPath(t, p))
			switch {
			case err != nil:
				t.Errorf("%s: resource %s: %v", m.file, r, err)
			case st.IsDir():
				if _, err := os.Stat(repoPath(t, path.Join(p, "kustomization.yaml"))); err != nil {
					t.Errorf("%s: resource %s is a directory without kustomization.yaml", m.file, r)
				}
			default:
				listed[p] = true
			}
		}
		for _, s := range k.SecretGenerator {
			for _, f := range s.Files {
				if _, err := os.Stat(repoPath(t, path.Join(dir, generatorFile(f)))); err != nil {
					t.Errorf("%s: secretGenerator %s file %s: %v", m.file, s.Name, f, err)
				}
			}
		}
		for _, c := range k.ConfigMapGenerator {
			for _, f := range c.Files {
				if _, err := os.Stat(repoPath(t, path.Join(dir, generatorFile(f)))); err != nil {
					t.Errorf("%s: configMapGenerator %s file %s: %v", m.file, c.Name, f, err)
				}
			}
			var keys []string
			for _, l := range c.Literals {
				keys = append(keys, strings.SplitN(l, "=", 2)[0])
			}
			checkEnvNames(t, m.file+" configMapGenerator "+c.Name, keys)
		}
	}
	for _, m := range ms {
		if m.kind() != "Kustomization" && !listed[m.file] {
			t.Errorf("%s is not listed in its directory's kustomization.yaml", m.file)
		}
	}
}

// checkSecurity wants a non-root, read-only, unprivileged container.
func checkSecurity(t *testing.T, where string, pod *secCtx, c *secCtx) {
	t.Helper()
	nonRoot := (pod != nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot) || (c != nil && c.RunAsNonRoot != nil && *c.RunAsNonRoot)
	if !nonRoot {
		t.Errorf("%s: runAsNonRoot is not set", where)
	}
	if pod != nil && pod.RunAsUser != nil && *pod.RunAsUser == 0 {
		t.Errorf("%s: runs as uid 0", where)
	}
	if c == nil || c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		t.Errorf("%s: root file system is not read-only", where)
	}
	if c == nil || c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if c == nil || c.Capabilities == nil || !slices.Contains(c.Capabilities.Drop, "ALL") {
		t.Errorf("%s: capabilities are not dropped", where)
	}
}

// portOf resolves a probe port (a number or a container port name).
func portOf(c container, p any) int {
	switch v := p.(type) {
	case int:
		return v
	case string:
		for _, cp := range c.Ports {
			if cp.Name == v {
				return cp.ContainerPort
			}
		}
	}
	return -1
}

// Workloads: selectors match their pods, resources are bounded, secrets and
// config maps exist, AIGOV_* variables are read by the services, and the
// four services probe /readyz and /healthz on the port AIGOV_HTTP_ADDR opens.
func TestK8sWorkloads(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	pdbs := map[string]map[string]string{}
	for _, m := range byKind(ms, "PodDisruptionBudget") {
		var p struct {
			Spec struct {
				Selector struct {
					MatchLabels map[string]string `yaml:"matchLabels"`
				} `yaml:"selector"`
			} `yaml:"spec"`
		}
		m.decode(t, &p)
		pdbs[m.name()] = p.Spec.Selector.MatchLabels
	}
	seenServices := map[string]bool{}
	for _, m := range append(append(byKind(ms, "Deployment"), byKind(ms, "StatefulSet")...), byKind(ms, "Job")...) {
		var w workload
		m.decode(t, &w)
		where := m.file + " " + m.kind() + "/" + m.name()
		if m.kind() != "Job" {
			if len(w.Spec.Selector.MatchLabels) == 0 {
				t.Errorf("%s: no selector", where)
			}
			for k, v := range w.Spec.Selector.MatchLabels {
				if w.Spec.Template.Metadata.Labels[k] != v {
					t.Errorf("%s: selector %s=%s does not match the pod labels %v", where, k, v, w.Spec.Template.Metadata.Labels)
				}
			}
		}
		pod := w.Spec.Template.Spec
		volumes := map[string]string{}
		for _, v := range pod.Volumes {
			if v.ConfigMap != nil {
				volumes[v.Name] = v.ConfigMap.Name
				if _, ok := g.configMaps[v.ConfigMap.Name]; !ok {
					t.Errorf("%s: volume %s reads ConfigMap %s, which nothing generates", where, v.Name, v.ConfigMap.Name)
				}
			}
			if v.Secret != nil {
				if _, ok := g.secrets[v.Secret.SecretName]; !ok {
					t.Errorf("%s: volume %s reads Secret %s, which no secretGenerator makes", where, v.Name, v.Secret.SecretName)
				}
			}
		}
		for _, c := range pod.Containers {
			cw := where + " container " + c.Name
			for _, r := range []string{"cpu", "memory"} {
				if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
					t.Errorf("%s: no %s request and limit", cw, r)
				}
			}
			env := map[string]string{}
			var names []string
			for _, e := range c.Env {
				names = append(names, e.Name)
				env[e.Name] = e.Value
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					ref := e.ValueFrom.SecretKeyRef
					if _, ok := g.secrets[ref.Name][ref.Key]; !ok {
						t.Errorf("%s: %s reads Secret %s key %s, which no secretGenerator makes", cw, e.Name, ref.Name, ref.Key)
					}
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil {
					data, ok := g.configMaps[ef.ConfigMapRef.Name]
					if !ok {
						t.Errorf("%s: envFrom ConfigMap %s, which nothing generates", cw, ef.ConfigMapRef.Name)
					}
					for k, v := range data {
						names = append(names, k)
						env[k] = v
					}
				}
			}
			checkEnvNames(t, cw, names)
			if m.kind() != "Deployment" || !strings.HasPrefix(m.name(), "aigov-") {
				if m.name() != "ldap" { // osixia/openldap needs root; dev only
					checkSecurity(t, cw, pod.SecurityContext, c.SecurityContext)
				}
				continue
			}

			// The four services.
			svc := strings.TrimPrefix(m.name(), "aigov-")
			role, ok := pipelineServices[svc]
			if !ok {
				t.Errorf("%s: not one of the four services", where)
				continue
			}
			seenServices[svc] = true
			checkSecurity(t, cw, pod.SecurityContext, c.SecurityContext)
			if !strings.HasPrefix(c.Image, "aigov/"+svc+":") {
				t.Errorf("%s: image %q, want aigov/%s (built by make images)", cw, c.Image, svc)
			}
			if w.Spec.Replicas == nil || *w.Spec.Replicas < 2 {
				t.Errorf("%s: replicas %v; run at least two (they share the durable consumer)", where, w.Spec.Replicas)
			}
			host, port := hostPort(t, env["AIGOV_HTTP_ADDR"])
			if host != "0.0.0.0" {
				t.Errorf("%s: AIGOV_HTTP_ADDR=%q must listen on all interfaces", cw, env["AIGOV_HTTP_ADDR"])
			}
			if !slices.ContainsFunc(c.Ports, func(p struct {
				Name          string `yaml:"name"`
				ContainerPort int    `yaml:"containerPort"`
			}) bool {
				return p.ContainerPort == port
			}) {
				t.Errorf("%s: no container port %d (AIGOV_HTTP_ADDR)", cw, port)
			}
			for name, pr := range map[string]*probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
				if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != name || portOf(c, pr.HTTPGet.Port) != port {
					t.Errorf("%s: probe for %s must GET %s on port %d", cw, name, name, port)
				}
			}
			if env["AIGOV_NATS_USER"] != role {
				t.Errorf("%s: AIGOV_NATS_USER=%q, want %q", cw, env["AIGOV_NATS_USER"], role)
			}
			for _, e := range c.Env {
				if e.Name == "AIGOV_NATS_PASSWORD" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "aigov-nats" || e.ValueFrom.SecretKeyRef.Key != role) {
					t.Errorf("%s: AIGOV_NATS_PASSWORD must come from Secret aigov-nats key %s", cw, role)
				}
			}
			if sel, ok := pdbs[m.name()]; !ok || fmt.Sprint(sel) != fmt.Sprint(w.Spec.Selector.MatchLabels) {
				t.Errorf("%s: no PodDisruptionBudget %s with the same selector (got %v)", where, m.name(), sel)
			}
			if svc == "policy" {
				dir := env["AIGOV_POLICY_DIR"]
				var mounted string
				for _, vm := range c.VolumeMounts {
					if vm.MountPath == dir {
						mounted = volumes[vm.Name]
					}
				}
				if mounted != "aigov-policies" {
					t.Errorf("%s: AIGOV_POLICY_DIR=%q is not where ConfigMap aigov-policies is mounted", cw, dir)
				}
			}
		}
	}
	for svc := range pipelineServices {
		if !seenServices[svc] {
			t.Errorf("no Deployment aigov-%s", svc)
		}
	}
}

// The policies ConfigMap holds exactly the files of policies/ the service
// reads, byte for byte (the policy set's version hashes them).
func TestK8sPoliciesConfigMap(t *testing.T) {
	outs, err := generate.PoliciesConfigMap(repoRoot(t))
	checkGenerated(t, outs, err)
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(readFile(t, generate.PoliciesConfigMapFile), &cm); err != nil {
		t.Fatal(err)
	}
	files, err := generate.PolicyFiles(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sortedKeys(cm.Data), sortedKeys(files)) {
		t.Errorf("ConfigMap keys %q, want %q", sortedKeys(cm.Data), sortedKeys(files))
	}
	for n, content := range files {
		if cm.Data[n] != content {
			t.Errorf("ConfigMap %s does not read back as policies/%s", n, n)
		}
	}
}

// The NATS cluster: three nodes routed to each other through the headless
// service, JetStream fsyncing every write, the users of the topology, and
// every password from the Secret the services read theirs from.
func TestK8sNATSCluster(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	var sts workload
	stsM := find(t, ms, "StatefulSet", "nats")
	stsM.decode(t, &sts)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Fatalf("nats StatefulSet replicas %v, want 3", sts.Spec.Replicas)
	}
	c := sts.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			env[e.Name] = stsM.name() + "-0"
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			env[e.Name] = g.secrets[ref.Name][ref.Key]
			if ref.Name != "aigov-nats" || generate.NATSPasswordVar(ref.Key) != e.Name {
				t.Errorf("nats %s reads Secret %s key %s, want aigov-nats key matching the variable", e.Name, ref.Name, ref.Key)
			}
		}
	}
	opts := parseNATSConf(t, "deploy/k8s/nats/nats.conf", env)
	passwords := map[string]string{}
	for _, u := range deployUserNames(t) {
		passwords[u] = g.secrets["aigov-nats"][u]
	}
	checkUsers(t, "deploy/k8s/nats/nats.conf", opts.Users, passwords)
	if opts.ServerName != stsM.name()+"-0" {
		t.Errorf("server_name %q: want the pod name (unique per node, as JetStream requires)", opts.ServerName)
	}
	if !opts.JetStream || !opts.SyncAlways {
		t.Errorf("JetStream %v, sync_interval always %v: want both", opts.JetStream, opts.SyncAlways)
	}
	if opts.Cluster.Name == "" || opts.Cluster.Port == 0 {
		t.Errorf("no cluster block: %+v", opts.Cluster)
	}
	var routes []string
	for _, r := range opts.Routes {
		routes = append(routes, r.Host)
	}
	var want []string
	for i := range *sts.Spec.Replicas {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", stsM.name(), i, sts.Spec.ServiceName, opts.Cluster.Port))
	}
	sort.Strings(routes)
	if !slices.Equal(routes, want) {
		t.Errorf("routes %q, want every pod through the headless service %q", routes, want)
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["client"] != opts.Port || ports["cluster"] != opts.Cluster.Port || ports["monitor"] != opts.HTTPPort {
		t.Errorf("container ports %v do not match the config's %d/%d/%d", ports, opts.Port, opts.Cluster.Port, opts.HTTPPort)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || portOf(c, c.ReadinessProbe.HTTPGet.Port) != opts.HTTPPort ||
		!strings.HasPrefix(c.ReadinessProbe.HTTPGet.Path, "/healthz") {
		t.Errorf("readiness probe %+v does not ask /healthz on the monitoring port", c.ReadinessProbe)
	}
	if !strings.HasPrefix(opts.StoreDir, "/data") || !slices.ContainsFunc(c.VolumeMounts, func(v volumeMount) bool {
		return v.Name == "data" && v.MountPath == "/data"
	}) {
		t.Errorf("store_dir %q is not on the data volume", opts.StoreDir)
	}
	if !slices.Equal(c.Args, []string{"nats-server", "--config", "/etc/nats/nats.conf", "--tls", "--tlscert", "/etc/nats-tls/tls.crt", "--tlskey", "/etc/nats-tls/tls.key"}) {
		t.Errorf("args %q", c.Args)
	}
	cm := g.configMaps["nats-config"]
	if _, ok := cm["nats.conf"]; !ok {
		t.Error("ConfigMap nats-config lacks nats.conf")
	}
	if _, ok := cm["auth.conf"]; !ok {
		t.Error("ConfigMap nats-config lacks auth.conf, which nats.conf includes")
	}

	// The services use the cluster: R3 and the client service.
	common := g.configMaps["aigov-common"]
	if n, err := strconv.Atoi(common["AIGOV_REPLICAS"]); err != nil || n != *sts.Spec.Replicas {
		t.Errorf("AIGOV_REPLICAS=%q, want %d (one replica per NATS node)", common["AIGOV_REPLICAS"], *sts.Spec.Replicas)
	}
	h, p := hostPort(t, common["AIGOV_NATS_URL"])
	var svc struct {
		Spec struct {
			Ports []struct {
				Port int `yaml:"port"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	find(t, ms, "Service", h).decode(t, &svc)
	if len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].Port != p || p != opts.Port {
		t.Errorf("AIGOV_NATS_URL=%q does not reach the nats service's client port", common["AIGOV_NATS_URL"])
	}
	find(t, ms, "Service", sts.Spec.ServiceName)
	find(t, ms, "PodDisruptionBudget", "nats")
}

// ClickHouse: the same release as compose, replicated, and the audit
// service writes through the operator's service as the user it defines.
func TestK8sClickHouse(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	var chi struct {
		Spec struct {
			Configuration struct {
				Users     map[string]any `yaml:"users"`
				Zookeeper struct {
					Nodes []struct {
						Host string `yaml:"host"`
					} `yaml:"nodes"`
				} `yaml:"zookeeper"`
				Clusters []struct {
					Name   string `yaml:"name"`
					Layout struct {
						ShardsCount   int `yaml:"shardsCount"`
						ReplicasCount int `yaml:"replicasCount"`
					} `yaml:"layout"`
				} `yaml:"clusters"`
			} `yaml:"configuration"`
			Templates struct {
				PodTemplates []struct {
					Spec podSpec `yaml:"spec"`
				} `yaml:"podTemplates"`
			} `yaml:"templates"`
		} `yaml:"spec"`
	}
	chiM := byKind(ms, "ClickHouseInstallation")
	if len(chiM) != 1 {
		t.Fatalf("want one ClickHouseInstallation, got %d", len(chiM))
	}
	chiM[0].decode(t, &chi)
	cfg := chi.Spec.Configuration
	if len(cfg.Clusters) != 1 || cfg.Clusters[0].Layout.ReplicasCount < 2 {
		t.Errorf("clusters %+v: want one cluster with at least two replicas", cfg.Clusters)
	}
	if len(cfg.Zookeeper.Nodes) == 0 || len(byKind(ms, "ClickHouseKeeperInstallation")) != 1 {
		t.Error("replicated tables need Keeper: no zookeeper nodes or no ClickHouseKeeperInstallation")
	}
	composeImage := compose(t).service(t, "clickhouse").Image
	for _, pt := range chi.Spec.Templates.PodTemplates {
		for _, c := range pt.Spec.Containers {
			if c.Image != composeImage {
				t.Errorf("ClickHouse image %q, want the release docker-compose.yml pins (%s)", c.Image, composeImage)
			}
		}
	}
	// Keeper runs the same release.
	var chk struct {
		Spec struct {
			Templates struct {
				PodTemplates []struct {
					Spec podSpec `yaml:"spec"`
				} `yaml:"podTemplates"`
			} `yaml:"templates"`
		} `yaml:"spec"`
	}
	if chks := byKind(ms, "ClickHouseKeeperInstallation"); len(chks) == 1 {
		chks[0].decode(t, &chk)
	}
	_, release, _ := strings.Cut(composeImage, ":")
	for _, pt := range chk.Spec.Templates.PodTemplates {
		for _, c := range pt.Spec.Containers {
			if c.Image != "clickhouse/clickhouse-keeper:"+release {
				t.Errorf("Keeper image %q, want clickhouse/clickhouse-keeper:%s", c.Image, release)
			}
		}
	}
	var audit workload
	find(t, ms, "Deployment", "aigov-audit").decode(t, &audit)
	env := map[string]envVar{}
	for _, e := range audit.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e
	}
	if h, p := hostPort(t, env["AIGOV_CLICKHOUSE_ADDR"].Value); h != "clickhouse-"+chiM[0].name() || p != 9000 {
		t.Errorf("AIGOV_CLICKHOUSE_ADDR=%q, want the operator's service clickhouse-%s:9000", env["AIGOV_CLICKHOUSE_ADDR"].Value, chiM[0].name())
	}
	user := env["AIGOV_CLICKHOUSE_USER"].Value
	ref, _ := cfg.Users[user+"/k8s_secret_password"].(string)
	pw := env["AIGOV_CLICKHOUSE_PASSWORD"].ValueFrom
	if ref == "" || pw == nil || pw.SecretKeyRef == nil || ref != pw.SecretKeyRef.Name+"/"+pw.SecretKeyRef.Key {
		t.Errorf("audit writes as %q with password %+v, but the ClickHouseInstallation defines that user's password as %q", user, pw, ref)
	}
	for k, v := range cfg.Users {
		if s, ok := v.(string); ok && strings.HasSuffix(k, "/k8s_secret_password") {
			name, key, _ := strings.Cut(s, "/")
			if _, ok := g.secrets[name][key]; !ok {
				t.Errorf("ClickHouse user %s reads Secret %s key %s, which no secretGenerator makes", k, name, key)
			}
		}
	}
	// The schema job runs the generated replicated schema from its ConfigMap.
	if _, ok := g.configMaps["aigov-clickhouse-schema"]["replicated-schema.sql"]; !ok {
		t.Error("ConfigMap aigov-clickhouse-schema lacks replicated-schema.sql")
	}
}

// The in-cluster Dex of the dev overlay is the compose one, and authn
// trusts it.
func TestK8sDex(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	for copyPath, orig := range map[string]string{
		"deploy/k8s/dex/config.yaml":   "deploy/dex/config.yaml",
		"deploy/k8s/dex/personas.ldif": "deploy/dex/ldap/personas.ldif",
	} {
		if !bytes.Equal(readFile(t, copyPath), readFile(t, orig)) {
			t.Errorf("%s differs from %s; copy it again (kustomize reads only files under its directory)", copyPath, orig)
		}
	}
	d := loadDex(t)
	oidc := g.configMaps["aigov-oidc"]
	if oidc["AIGOV_OIDC_ISSUERS"] != d.Issuer || oidc["AIGOV_OIDC_AUDIENCE"] != d.StaticClients[0].ID {
		t.Errorf("aigov-oidc %v does not trust Dex's issuer %q and client %q", oidc, d.Issuer, d.StaticClients[0].ID)
	}
	host, port := hostPort(t, d.Issuer)
	var svc struct {
		Spec struct {
			Ports []struct {
				Port int `yaml:"port"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	find(t, ms, "Service", host).decode(t, &svc)
	if len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].Port != port {
		t.Errorf("Service %s does not serve the issuer's port %d", host, port)
	}
	ldapHost, _ := hostPort(t, d.Connectors[0].Config.Host)
	find(t, ms, "Service", ldapHost)
	if g.secrets["aigov-dex"]["ldap-admin-password"] == "" || g.secrets["aigov-dex"]["client-secret"] == "" {
		t.Error("Secret aigov-dex lacks the LDAP admin password or the client secret")
	}
}

// On the cluster the audit service must not start before the replicated
// tables exist: the dev overlay holds it with an init container that waits
// for them, as the writer's user.
func TestK8sAuditWaitsForSchema(t *testing.T) {
	const rel = "deploy/k8s/overlays/dev/audit-waits-for-schema.yaml"
	var k kustomization
	if err := yaml.Unmarshal(readFile(t, "deploy/k8s/overlays/dev/kustomization.yaml"), &k); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(k.Patches, func(p struct {
		Path string `yaml:"path"`
	}) bool {
		return path.Join("deploy/k8s/overlays/dev", p.Path) == rel
	}) {
		t.Fatalf("the dev overlay does not apply %s", rel)
	}
	var patch struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `yaml:"initContainers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, rel), &patch); err != nil {
		t.Fatal(err)
	}
	ms := loadManifests(t)
	find(t, ms, patch.Kind, patch.Metadata.Name)
	if patch.Metadata.Name != "aigov-audit" || len(patch.Spec.Template.Spec.InitContainers) != 1 {
		t.Fatalf("%s patches %s/%s with %d init containers", rel, patch.Kind, patch.Metadata.Name, len(patch.Spec.Template.Spec.InitContainers))
	}
	c := patch.Spec.Template.Spec.InitContainers[0]
	script := strings.Join(append(c.Command, c.Args...), " ")
	for _, want := range []string{"clickhouse-aigov", "schema_migrations", "engine LIKE 'Replicated%'", "--user aigov"} {
		if !strings.Contains(script, want) {
			t.Errorf("the init container's command does not contain %q: %s", want, script)
		}
	}
	g := loadGenerated(t, ms)
	checkSecurity(t, rel, nil, c.SecurityContext)
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			if _, ok := g.secrets[e.ValueFrom.SecretKeyRef.Name][e.ValueFrom.SecretKeyRef.Key]; !ok {
				t.Errorf("%s reads a Secret key nothing makes: %+v", rel, e.ValueFrom.SecretKeyRef)
			}
		}
	}
	if c.Image != compose(t).service(t, "clickhouse").Image {
		t.Errorf("init container image %q, want the pinned ClickHouse release", c.Image)
	}
}
