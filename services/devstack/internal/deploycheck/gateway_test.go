package deploycheck

import (
	"bytes"
	"encoding/json"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// mcpConfig is the MCP gateway's configuration file
// (services/gateway/internal/mcpgw.File), the fields these checks read;
// unknown fields fail the decode as they fail the gateway's.
type mcpConfig struct {
	Resource             string   `json:"resource"`
	AuthorizationServers []string `json:"authorization_servers"`
	ScopesSupported      []string `json:"scopes_supported"`
	MaskedKeys           []string `json:"masked_keys"`
	ContextKeys          []string `json:"context_keys"`
	ListCacheTTL         string   `json:"list_cache_ttl"`
	ListCacheSize        int      `json:"list_cache_size"`
	MaxSessions          int      `json:"max_sessions"`
	CallTimeout          string   `json:"call_timeout"`
	Servers              []struct {
		Name    string            `json:"name"`
		Command string            `json:"command"`
		Args    []string          `json:"args"`
		Env     []string          `json:"env"`
		URL     string            `json:"url"`
		Headers map[string]string `json:"headers"`
	} `json:"servers"`
}

func readMCPConfig(t *testing.T, rel string) mcpConfig {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(readFile(t, rel)))
	dec.DisallowUnknownFields()
	var c mcpConfig
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return c
}

// checkMCPUpstreams: every upstream is a Streamable HTTP server (a
// distroless gateway image has nothing to run over stdio) and never gets
// a caller's credentials from the config: no Authorization header.
// upstreamPort returns the port the named host listens on, 0 if no such
// host is deployed.
func checkMCPUpstreams(t *testing.T, where string, c mcpConfig, upstreamPort func(host string) int) {
	t.Helper()
	if len(c.Servers) == 0 {
		t.Errorf("%s: no upstream MCP server", where)
	}
	for _, s := range c.Servers {
		if s.Command != "" || s.URL == "" {
			t.Errorf("%s: upstream %s: want a Streamable HTTP url (the gateway image holds no stdio server), got command %q url %q", where, s.Name, s.Command, s.URL)
			continue
		}
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Errorf("%s: upstream %s: %v", where, s.Name, err)
			continue
		}
		port, _ := strconv.Atoi(u.Port())
		if want := upstreamPort(u.Hostname()); want == 0 || port != want {
			t.Errorf("%s: upstream %s at %s: nothing deployed listens on %s (want port %d)", where, s.Name, s.URL, u.Host, want)
		}
		for h := range s.Headers {
			if strings.EqualFold(h, "Authorization") {
				t.Errorf("%s: upstream %s gets an Authorization header from the config", where, s.Name)
			}
		}
	}
}

// checkMCPResource: the MCP endpoint is /mcp on the port the gateway's
// API listens on, as clients reach it (host, port), and the trusted
// issuers are the ones authn trusts.
func checkMCPResource(t *testing.T, where string, c mcpConfig, host string, port int, issuers string) {
	t.Helper()
	u, err := url.Parse(c.Resource)
	if err != nil || u.Scheme != "http" || u.Hostname() != host || u.Port() != strconv.Itoa(port) || u.Path != "/mcp" {
		t.Errorf("%s: resource %q, want http://%s:%d/mcp", where, c.Resource, host, port)
	}
	want := strings.Split(issuers, ",")
	if !slices.Equal(sortedCopy(c.AuthorizationServers), sortedCopy(want)) {
		t.Errorf("%s: authorization_servers %v, but authn trusts %v: a token of another issuer gets 401, one authn rejects a deny", where, c.AuthorizationServers, want)
	}
}

// Compose runs the MCP gateway: its config file from deploy/gateway,
// mounted read-only, with the demo upstream (its own container, health
// checked, with no NATS user and no secret) behind it; /mcp on the API's
// published port; the gateway connects with its own NATS credentials only.
func TestComposeMCPGateway(t *testing.T) {
	c := compose(t)
	gw := c.service(t, "gateway")
	env := gw.Environment
	p := env["AIGOV_GATEWAY_MCP_CONFIG"]
	if p == "" {
		t.Fatal("gateway: no AIGOV_GATEWAY_MCP_CONFIG: compose runs the HTTP API only")
	}
	var src string
	for _, v := range gw.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && under(p, parts[1]) {
			src = path.Join(parts[0], strings.TrimPrefix(path.Clean(p), path.Clean(parts[1])+"/"))
			if len(parts) < 3 || !strings.Contains(parts[2], "ro") {
				t.Errorf("gateway: %s is mounted writable", parts[1])
			}
		}
	}
	rel := strings.TrimPrefix(src, repoRoot(t)+"/")
	if src == "" || !strings.HasPrefix(rel, "deploy/") {
		t.Fatalf("gateway: AIGOV_GATEWAY_MCP_CONFIG=%s is not a file of deploy/ mounted into the container (%v)", p, gw.Volumes)
	}
	cfg := readMCPConfig(t, rel)

	_, apiPort := hostPort(t, env["AIGOV_GATEWAY_ADDR"])
	published := 0
	for _, pt := range gw.Ports {
		parts := strings.Split(strings.TrimSuffix(pt, "/tcp"), ":")
		if len(parts) == 3 && parts[2] == strconv.Itoa(apiPort) {
			published, _ = strconv.Atoi(parts[1])
		}
	}
	if published == 0 {
		t.Fatalf("gateway: the API port %d is not published (%v)", apiPort, gw.Ports)
	}
	checkMCPResource(t, rel, cfg, "127.0.0.1", published, c.service(t, "authn").Environment["AIGOV_OIDC_ISSUERS"])

	checkMCPUpstreams(t, rel, cfg, func(host string) int {
		s, ok := c.Services[host]
		if !ok || s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			return 0
		}
		if gw.DependsOn[host].Condition != "service_healthy" {
			t.Errorf("gateway does not wait for its upstream %s to be healthy", host)
		}
		for k := range s.Environment {
			if strings.HasPrefix(k, "AIGOV_NATS") {
				t.Errorf("upstream %s has %s: an MCP upstream never talks to NATS", host, k)
			}
		}
		for _, v := range s.Volumes {
			t.Errorf("upstream %s mounts %s: it needs no key, certificate or secret", host, v)
		}
		u, err := url.Parse(s.Healthcheck.Test[len(s.Healthcheck.Test)-1])
		if err != nil {
			return 0
		}
		port, _ := strconv.Atoi(u.Port())
		return port
	})

	// The gateway's own NATS user and password, and no other role's.
	natsEnv := c.service(t, "nats").Environment
	if env["AIGOV_NATS_USER"] != schemas.RoleGateway || env["AIGOV_NATS_PASSWORD"] != natsEnv[generate.NATSPasswordVar(schemas.RoleGateway)] {
		t.Errorf("gateway connects as %q: want user gateway with NATS_GATEWAY_PASSWORD", env["AIGOV_NATS_USER"])
	}
	for k, v := range natsEnv {
		if strings.HasPrefix(k, "NATS_") && strings.HasSuffix(k, "_PASSWORD") && k != generate.NATSPasswordVar(schemas.RoleGateway) {
			for name, val := range env {
				if val == v {
					t.Errorf("gateway %s holds %s, another NATS user's password", name, k)
				}
			}
		}
	}
}

// Kubernetes runs the MCP gateway: the config file is mcp.json of a
// ConfigMap the dev overlay generates, mounted read-only where
// AIGOV_GATEWAY_MCP_CONFIG points; /mcp on the Service's API port; the
// demo upstream is a Deployment and Service of its own without NATS
// credentials; the gateway reads only Secret aigov-nats key gateway.
func TestK8sMCPGateway(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	pod, c := serviceContainer(t, ms, "gateway")
	env, _ := k8sEnv(g, c)
	p := env["AIGOV_GATEWAY_MCP_CONFIG"]
	if p == "" {
		t.Fatal("Deployment aigov-gateway: no AIGOV_GATEWAY_MCP_CONFIG: the cluster runs the HTTP API only")
	}
	var rel string
	for _, vm := range c.VolumeMounts {
		if !under(p, vm.MountPath) {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil {
				key := strings.TrimPrefix(path.Clean(p), path.Clean(vm.MountPath)+"/")
				rel = g.configMapFiles[v.ConfigMap.Name][key]
			}
		}
	}
	if rel == "" {
		t.Fatalf("Deployment aigov-gateway: AIGOV_GATEWAY_MCP_CONFIG=%s is no file of a generated ConfigMap mounted there", p)
	}
	cfg := readMCPConfig(t, rel)

	_, apiPort := hostPort(t, env["AIGOV_GATEWAY_ADDR"])
	var svc struct {
		Spec struct {
			SessionAffinity string `yaml:"sessionAffinity"`
			Ports           []struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort any    `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	find(t, ms, "Service", "aigov-gateway").decode(t, &svc)
	port := 0
	for _, sp := range svc.Spec.Ports {
		if portOf(c, sp.TargetPort) == apiPort {
			port = sp.Port
		}
	}
	if port == 0 {
		t.Fatalf("Service aigov-gateway does not expose the API port %d", apiPort)
	}
	if svc.Spec.SessionAffinity != "ClientIP" {
		t.Errorf("Service aigov-gateway sessionAffinity %q: an MCP session lives in one replica, want ClientIP", svc.Spec.SessionAffinity)
	}
	checkMCPResource(t, rel, cfg, "aigov-gateway", port, g.configMaps["aigov-oidc"]["AIGOV_OIDC_ISSUERS"])

	checkMCPUpstreams(t, rel, cfg, func(host string) int {
		var s struct {
			Spec struct {
				Selector map[string]string `yaml:"selector"`
				Ports    []struct {
					Port       int `yaml:"port"`
					TargetPort any `yaml:"targetPort"`
				} `yaml:"ports"`
			} `yaml:"spec"`
		}
		found := false
		for _, m := range byKind(ms, "Service") {
			if m.name() == host {
				m.decode(t, &s)
				found = true
			}
		}
		if !found || len(s.Spec.Ports) == 0 {
			return 0
		}
		for _, m := range byKind(ms, "Deployment") {
			var w workload
			m.decode(t, &w)
			if len(s.Spec.Selector) == 0 || !matches(s.Spec.Selector, w.Spec.Template.Metadata.Labels) {
				continue
			}
			for _, uc := range w.Spec.Template.Spec.Containers {
				for _, e := range uc.Env {
					if strings.HasPrefix(e.Name, "AIGOV_NATS") || (e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil) {
						t.Errorf("upstream %s: %s has %s: an MCP upstream needs no NATS user and no secret", host, m.name(), e.Name)
					}
				}
			}
			for _, v := range w.Spec.Template.Spec.Volumes {
				if v.Secret != nil {
					t.Errorf("upstream %s: %s mounts Secret %s", host, m.name(), v.Secret.SecretName)
				}
			}
		}
		return s.Spec.Ports[0].Port
	})

	// The gateway's only secret is its own NATS password.
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			if ref := e.ValueFrom.SecretKeyRef; ref.Name != "aigov-nats" || ref.Key != schemas.RoleGateway {
				t.Errorf("Deployment aigov-gateway: %s reads Secret %s key %s; the gateway holds only its own NATS password", e.Name, ref.Name, ref.Key)
			}
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil {
			t.Errorf("Deployment aigov-gateway: envFrom Secret %s", ef.SecretRef.Name)
		}
	}
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName != "aigov-nats-tls" {
			t.Errorf("Deployment aigov-gateway mounts Secret %s", v.Secret.SecretName)
		}
	}
}

// matches reports whether labels carry every key=value of selector.
func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
