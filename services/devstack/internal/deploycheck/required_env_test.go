package deploycheck

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// requiredVar is one variable a service declares required: without it the
// service refuses to start (servicekit.Env.Declare).
type requiredVar struct {
	name string
	at   string // where it is declared: the service and the section
}

// requiredEnv reads, by service, the variables each one declares required,
// from the services' own declarations (-settings-json, the source of
// docs/configuration.md too). A pipeline service that declares none, or
// declares nothing at all, fails the test: the check must not pass by
// reading nothing.
func requiredEnv(t testing.TB) map[string][]requiredVar {
	t.Helper()
	out := map[string][]requiredVar{}
	for _, d := range declared(t) {
		for _, sec := range d.Sections {
			for _, st := range sec.Settings {
				if !st.Required {
					continue
				}
				for _, n := range st.Names {
					out[d.Service] = append(out[d.Service], requiredVar{name: n, at: fmt.Sprintf("%s's settings, section %q", d.Service, sec.Title)})
				}
			}
		}
	}
	for _, svc := range sortedKeys(pipelineServices) {
		if len(out[svc]) == 0 {
			t.Errorf("%s declares no required setting; every pipeline service requires its signing key or the trust file", svc)
		}
	}
	return out
}

// k8sEnv resolves what a container's environment sets: each variable's
// value, "" for one from a Secret or ConfigMap file (whose content is not a
// literal), and where it comes from. Variables whose source nothing defines
// are left out, as they would be unset (or fail the pod) on the cluster.
func k8sEnv(g generated, c container) (vals map[string]string, from map[string]string) {
	vals, from = map[string]string{}, map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			for k, v := range g.configMaps[ef.ConfigMapRef.Name] {
				vals[k], from[k] = v, "envFrom ConfigMap "+ef.ConfigMapRef.Name
			}
		case ef.SecretRef != nil:
			for k, v := range g.secrets[ef.SecretRef.Name] {
				vals[k], from[k] = v, "envFrom Secret "+ef.SecretRef.Name
			}
		}
	}
	// env wins over envFrom, as in Kubernetes.
	for _, e := range c.Env {
		delete(vals, e.Name)
		delete(from, e.Name)
		switch {
		case e.ValueFrom == nil:
			if strings.TrimSpace(e.Value) != "" {
				vals[e.Name], from[e.Name] = e.Value, "env"
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if v, ok := g.secrets[ref.Name][ref.Key]; ok {
				vals[e.Name], from[e.Name] = v, "Secret "+ref.Name+" key "+ref.Key
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			if v, ok := g.configMaps[ref.Name][ref.Key]; ok {
				vals[e.Name], from[e.Name] = v, "ConfigMap "+ref.Name+" key "+ref.Key
			}
		default:
			vals[e.Name], from[e.Name] = "", "valueFrom"
		}
	}
	return vals, from
}

// serviceContainer is the container of Deployment aigov-<svc> named svc.
func serviceContainer(t testing.TB, ms []manifest, svc string) (podSpec, container) {
	t.Helper()
	var w workload
	find(t, ms, "Deployment", "aigov-"+svc).decode(t, &w)
	for _, c := range w.Spec.Template.Spec.Containers {
		if c.Name == svc {
			return w.Spec.Template.Spec, c
		}
	}
	t.Fatalf("Deployment aigov-%s has no container %q", svc, svc)
	return podSpec{}, container{}
}

// Every variable a service declares required is set for it both in
// docker-compose.yml (as `docker-compose config` resolves it) and in its
// Kubernetes Deployment (env, or envFrom a ConfigMap or Secret that defines
// it): without it the service refuses to start. An empty value counts as
// unset, as it does for the service.
func TestRequiredEnvIsSet(t *testing.T) {
	required := requiredEnv(t)
	c := compose(t)
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	for _, svc := range sortedKeys(required) {
		t.Run(svc, func(t *testing.T) {
			env := c.service(t, svc).Environment
			_, ctr := serviceContainer(t, ms, svc)
			k8s, _ := k8sEnv(g, ctr)
			for _, v := range required[svc] {
				if strings.TrimSpace(env[v.name]) == "" {
					t.Errorf("docker-compose.yml does not set %s for service %s, which requires it (declared in %s): it would refuse to start",
						v.name, svc, v.at)
				}
				if _, ok := k8s[v.name]; !ok {
					t.Errorf("Deployment aigov-%s does not set %s, which %s requires (declared in %s): it would refuse to start",
						svc, v.name, svc, v.at)
				}
			}
		})
	}
}

// fileVars are variables naming a file the service reads (and may create)
// at run time: the file must lie on a volume, as the root file systems are
// read-only and the images hold no such file.
var fileVars = []struct{ svc, name, create string }{
	{"audit", "AIGOV_AUDIT_SIGNING_KEY", "AIGOV_AUDIT_SIGNING_KEY_CREATE"},
	// The CA each service verifies NATS against.
	{"audit", "AIGOV_NATS_TLS_CA", ""},
	{"authn", "AIGOV_NATS_TLS_CA", ""},
	{"policy", "AIGOV_NATS_TLS_CA", ""},
	{"reaper", "AIGOV_NATS_TLS_CA", ""},
	{"gateway", "AIGOV_NATS_TLS_CA", ""},
	// The MCP gateway's upstreams and trusted issuers.
	{"gateway", "AIGOV_GATEWAY_MCP_CONFIG", ""},
}

// under reports whether p lies under directory dir.
func under(p, dir string) bool {
	p, dir = path.Clean(p), path.Clean(dir)
	return dir == "/" || strings.HasPrefix(p, dir+"/")
}

// In compose the file lies under a mounted volume; when the service creates
// it, under a writable named volume (so it survives the container) whose
// mount point the image makes owned by the user the service runs as (so
// Docker initialises the volume writable for it).
func TestComposeFileVarsAreOnVolumes(t *testing.T) {
	c := compose(t)
	for _, fv := range fileVars {
		s := c.service(t, fv.svc)
		p := s.Environment[fv.name]
		if p == "" {
			continue // TestRequiredEnvIsSet says so
		}
		if !path.IsAbs(p) {
			t.Errorf("%s %s=%q is not an absolute path", fv.svc, fv.name, p)
			continue
		}
		var src, target, mode string
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && under(p, parts[1]) && len(parts[1]) > len(target) {
				src, target, mode = parts[0], parts[1], ""
				if len(parts) > 2 {
					mode = parts[2]
				}
			}
		}
		if target == "" {
			t.Errorf("%s %s=%q lies under no mounted volume (%v); the root file system is read-only and the image has no such file",
				fv.svc, fv.name, p, s.Volumes)
			continue
		}
		if create, _ := strconv.ParseBool(s.Environment[fv.create]); !create {
			continue
		}
		if _, named := c.Volumes[src]; !named {
			t.Errorf("%s creates %s=%q under %s, mounted from %q: want a named volume, or each new container makes a new file", fv.svc, fv.name, p, target, src)
		}
		if strings.Contains(mode, "ro") {
			t.Errorf("%s creates %s=%q, but %s is mounted read-only", fv.svc, fv.name, p, target)
		}
		checkImageDirOwned(t, target)
	}
}

// checkImageDirOwned wants the service stage of deploy/Dockerfile to make
// dir owned by its USER (COPY --chown=<user> … dir): the images are
// distroless, with no shell to mkdir or chown at start.
func checkImageDirOwned(t *testing.T, dir string) {
	t.Helper()
	stage := regexp.MustCompile(`(?ms)^FROM\s+\S+\s+AS\s+service\s*$(.*?)(?:^FROM\s|\z)`).FindStringSubmatch(string(readFile(t, "deploy/Dockerfile")))
	if stage == nil {
		t.Error("deploy/Dockerfile has no stage `AS service`")
		return
	}
	user := regexp.MustCompile(`(?m)^USER\s+(\S+)\s*$`).FindStringSubmatch(stage[1])
	if user == nil {
		t.Error("the service stage of deploy/Dockerfile sets no USER")
		return
	}
	for _, m := range regexp.MustCompile(`(?m)^COPY\s+(.*)$`).FindAllStringSubmatch(stage[1], -1) {
		f := strings.Fields(m[1])
		if slices.Contains(f, "--chown="+user[1]) && path.Clean(f[len(f)-1]) == path.Clean(dir) {
			return
		}
	}
	t.Errorf("the service stage of deploy/Dockerfile does not create %s owned by USER %s (COPY --from=… --chown=%s <empty dir> %s): "+
		"Docker would initialise the volume mounted there owned by root, and the service could not write to it", dir, user[1], user[1], dir)
}

// On Kubernetes the file lies under a volumeMount, read-only, of a Secret or
// ConfigMap that holds it, and the service does not create it: production
// keys come from the secret manager, and readOnlyRootFilesystem stays.
func TestK8sFileVarsAreMounted(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	for _, fv := range fileVars {
		pod, c := serviceContainer(t, ms, fv.svc)
		where := "Deployment aigov-" + fv.svc
		env, _ := k8sEnv(g, c)
		if create, _ := strconv.ParseBool(env[fv.create]); create {
			t.Errorf("%s sets %s: on a cluster the file comes from a Secret, never created by a replica", where, fv.create)
		}
		p, ok := env[fv.name]
		if !ok {
			continue // TestRequiredEnvIsSet says so
		}
		if !path.IsAbs(p) {
			t.Errorf("%s: %s=%q is not an absolute path", where, fv.name, p)
			continue
		}
		var vm volumeMount
		for _, m := range c.VolumeMounts {
			if under(p, m.MountPath) && len(m.MountPath) > len(vm.MountPath) {
				vm = m
			}
		}
		if vm.Name == "" {
			t.Errorf("%s: %s=%q lies under no volumeMount; the root file system is read-only and the image has no such file", where, fv.name, p)
			continue
		}
		if !vm.ReadOnly {
			t.Errorf("%s: volumeMount %s at %s (holding %s) is not readOnly", where, vm.Name, vm.MountPath, fv.name)
		}
		file := strings.TrimPrefix(path.Clean(p), path.Clean(vm.MountPath)+"/")
		found := false
		for _, v := range pod.Volumes {
			if v.Name != vm.Name {
				continue
			}
			found = true
			var kind, name string
			var keys map[string]string
			var items []keyToPath
			switch {
			case v.Secret != nil:
				kind, name, keys, items = "Secret", v.Secret.SecretName, g.secrets[v.Secret.SecretName], v.Secret.Items
			case v.ConfigMap != nil:
				kind, name, keys, items = "ConfigMap", v.ConfigMap.Name, g.configMaps[v.ConfigMap.Name], v.ConfigMap.Items
			default:
				t.Errorf("%s: %s=%q is on volume %s, which is neither a Secret nor a ConfigMap: nothing puts the file there", where, fv.name, p, v.Name)
				continue
			}
			key := file
			if len(items) > 0 {
				key = ""
				for _, it := range items {
					if it.Path == file {
						key = it.Key
					}
				}
			}
			if _, ok := keys[key]; !ok || key == "" {
				t.Errorf("%s: %s=%q is file %q of %s %s, which has no such key (it has %q)", where, fv.name, p, file, kind, name, sortedKeys(keys))
			}
		}
		if !found {
			t.Errorf("%s: volumeMount %s names no volume of the pod", where, vm.Name)
		}
	}
}

// The dev overlay's signing key is one the audit service loads: a PKCS#8
// PEM Ed25519 private key (services/audit/chain.LoadOrCreateKey), and it
// says loudly that it is for dev clusters only.
func TestK8sDevSigningKey(t *testing.T) {
	g := loadGenerated(t, loadManifests(t))
	file, ok := g.secretFiles["aigov-audit-signing-key"]["signing.key"]
	if !ok {
		t.Fatal("no secretGenerator makes Secret aigov-audit-signing-key key signing.key from a file")
	}
	if !strings.HasPrefix(file, "deploy/k8s/overlays/dev/") {
		t.Errorf("the signing key %s is committed outside the dev overlay", file)
	}
	b := readFile(t, file)
	if !strings.Contains(string(b), "DEV CLUSTERS ONLY") {
		t.Errorf("%s does not say it is for DEV CLUSTERS ONLY", file)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s: not a PEM PRIVATE KEY", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if _, ok := k.(ed25519.PrivateKey); !ok {
		t.Errorf("%s: a %T, want an Ed25519 key", file, k)
	}
}
