package deploycheck

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// pipelineServices are the four services and the gateway, and their NATS
// roles.
var pipelineServices = map[string]string{
	"authn":   schemas.RoleAuthn,
	"policy":  schemas.RolePolicy,
	"audit":   schemas.RoleAudit,
	"reaper":  schemas.RoleReaper,
	"gateway": schemas.RoleGateway,
}

// TestComposeFileIsValid runs docker-compose's own validation: unknown keys,
// wrong types and depends_on to undefined services fail it.
func TestComposeFileIsValid(t *testing.T) {
	dockerCompose(t, "config", "-q")
}

func TestComposeEnvVarsAreReadByTheServices(t *testing.T) {
	c := compose(t)
	for _, name := range sortedKeys(c.Services) {
		checkEnvNames(t, "docker-compose.yml service "+name, sortedKeys(c.Services[name].Environment))
	}
	// The Dockerfile's ENV lines count too.
	var vars []string
	for _, m := range regexp.MustCompile(`(?m)^ENV\s+(.*)$`).FindAllStringSubmatch(string(readFile(t, "deploy/Dockerfile")), -1) {
		for _, kv := range strings.Fields(m[1]) {
			vars = append(vars, strings.SplitN(kv, "=", 2)[0])
		}
	}
	if len(vars) == 0 {
		t.Error("deploy/Dockerfile sets no ENV; the services need AIGOV_HTTP_ADDR on a non-loopback address in a container")
	}
	checkEnvNames(t, "deploy/Dockerfile", vars)
}

// The four services: built from the one Dockerfile, health-checked on the
// port their AIGOV_HTTP_ADDR listens on, each with its own NATS user and the
// password the NATS server gives that user.
func TestComposePipelineServices(t *testing.T) {
	c := compose(t)
	natsEnv := c.service(t, "nats").Environment
	_, natsPort := natsClientPort(t)
	for svc, role := range pipelineServices {
		t.Run(svc, func(t *testing.T) {
			s := c.service(t, svc)
			if s.Build == nil || s.Build.Dockerfile != "deploy/Dockerfile" || s.Build.Target != "service" || s.Build.Args["SERVICE"] != svc {
				t.Errorf("build: got %+v, want deploy/Dockerfile target service with SERVICE=%s", s.Build, svc)
			}
			if s.Image != "aigov/"+svc+":dev" {
				t.Errorf("image %q, want aigov/%s:dev (the name `make images` builds)", s.Image, svc)
			}
			env := s.Environment
			host, port := hostPort(t, env["AIGOV_HTTP_ADDR"])
			if host != "0.0.0.0" {
				t.Errorf("AIGOV_HTTP_ADDR=%q: must listen on 0.0.0.0 in a container", env["AIGOV_HTTP_ADDR"])
			}
			if !s.containerPorts()[port] {
				t.Errorf("ports %v do not publish the HTTP port %d", s.Ports, port)
			}
			want := []string{"CMD", "/healthcheck", fmt.Sprintf("http://127.0.0.1:%d/readyz", port)}
			if s.Healthcheck == nil || strings.Join(s.Healthcheck.Test, " ") != strings.Join(want, " ") {
				t.Errorf("healthcheck %+v, want test %q", s.Healthcheck, want)
			}
			if env["AIGOV_NATS_USER"] != role {
				t.Errorf("AIGOV_NATS_USER=%q, want %q", env["AIGOV_NATS_USER"], role)
			}
			pw := natsEnv[generate.NATSPasswordVar(role)]
			if pw == "" || env["AIGOV_NATS_PASSWORD"] != pw {
				t.Errorf("AIGOV_NATS_PASSWORD=%q, but the nats service gives %s=%q", env["AIGOV_NATS_PASSWORD"], generate.NATSPasswordVar(role), pw)
			}
			if h, p := hostPort(t, env["AIGOV_NATS_URL"]); h != "nats" || p != natsPort {
				t.Errorf("AIGOV_NATS_URL=%q, want nats://nats:%d", env["AIGOV_NATS_URL"], natsPort)
			}
			if d := s.DependsOn["nats"]; d.Condition != "service_healthy" {
				t.Errorf("depends_on nats: %q, want service_healthy", d.Condition)
			}
			if !s.ReadOnly {
				t.Error("read_only is off: the services write nothing, so their root file system should be read-only")
			}
		})
	}

	audit := c.service(t, "audit").Environment
	ch := c.service(t, "clickhouse").Environment
	if h, p := hostPort(t, audit["AIGOV_CLICKHOUSE_ADDR"]); h != "clickhouse" || p != 9000 || !c.service(t, "clickhouse").containerPorts()[9000] {
		t.Errorf("audit AIGOV_CLICKHOUSE_ADDR=%q, want clickhouse:9000 (the native port)", audit["AIGOV_CLICKHOUSE_ADDR"])
	}
	if audit["AIGOV_CLICKHOUSE_USER"] != ch["CLICKHOUSE_USER"] || audit["AIGOV_CLICKHOUSE_PASSWORD"] != ch["CLICKHOUSE_PASSWORD"] || ch["CLICKHOUSE_PASSWORD"] == "" {
		t.Errorf("audit ClickHouse credentials %q/%q differ from the clickhouse service's CLICKHOUSE_USER/PASSWORD %q/%q",
			audit["AIGOV_CLICKHOUSE_USER"], audit["AIGOV_CLICKHOUSE_PASSWORD"], ch["CLICKHOUSE_USER"], ch["CLICKHOUSE_PASSWORD"])
	}
	if d := c.service(t, "audit").DependsOn["clickhouse"]; d.Condition != "service_healthy" {
		t.Errorf("audit depends_on clickhouse: %q, want service_healthy", d.Condition)
	}
	if d := c.service(t, "authn").DependsOn["dex"]; d.Condition != "service_healthy" {
		t.Errorf("authn depends_on dex: %q, want service_healthy", d.Condition)
	}
	policy := c.service(t, "policy")
	if dir := policy.Environment["AIGOV_POLICY_DIR"]; policy.mounts()[dir] != repoPath(t, "policies") {
		t.Errorf("policy AIGOV_POLICY_DIR=%q is not where ./policies is mounted (%v)", dir, policy.Volumes)
	}
	reaper := c.service(t, "reaper").Environment
	if reaper["AIGOV_SESSION_MAX_AGE"] == "" {
		t.Error("reaper has no AIGOV_SESSION_MAX_AGE; the demo's session scenario depends on it")
	}
}

// Every service something waits on with service_healthy has a health check,
// and the one-shot demo starts only after all four services are healthy.
func TestComposeStartOrder(t *testing.T) {
	c := compose(t)
	for _, name := range sortedKeys(c.Services) {
		for dep, d := range c.Services[name].DependsOn {
			switch d.Condition {
			case "service_healthy":
				if c.Services[dep].Healthcheck == nil || len(c.Services[dep].Healthcheck.Test) == 0 {
					t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
				}
			case "service_completed_successfully", "service_started":
			default:
				t.Errorf("%s depends_on %s with condition %q", name, dep, d.Condition)
			}
		}
	}
	demo := c.service(t, "demo")
	for svc := range pipelineServices {
		if demo.DependsOn[svc].Condition != "service_healthy" {
			t.Errorf("demo must wait for %s to be healthy", svc)
		}
	}
	if demo.Restart != "no" {
		t.Errorf("demo restart %q: a one-shot publisher must not be restarted", demo.Restart)
	}
	if g := c.service(t, "grafana"); g.DependsOn["clickhouse"].Condition != "service_healthy" {
		t.Error("grafana must wait for a healthy clickhouse")
	}
}

// NATS and ClickHouse keep their data in named volumes; every third-party
// image is pinned to an exact version.
func TestComposeVolumesAndImages(t *testing.T) {
	c := compose(t)
	for svc, path := range map[string]string{"nats": "/data", "clickhouse": "/var/lib/clickhouse", "grafana": "/var/lib/grafana"} {
		src := c.service(t, svc).mounts()[path]
		if _, named := c.Volumes[src]; !named {
			t.Errorf("%s: %s is mounted from %q, want a named volume", svc, path, src)
		}
	}
	exact := regexp.MustCompile(`^[a-z0-9./-]+:v?[0-9]+\.[0-9]+\.[0-9]+(\.[0-9]+)?(-[a-z0-9.]+)?$`)
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Build != nil {
			continue
		}
		if !exact.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to an exact version tag", name, s.Image)
		}
	}
	if img := c.service(t, "clickhouse").Image; !strings.HasPrefix(img, "clickhouse/clickhouse-server:") {
		t.Errorf("clickhouse image %q", img)
	}
}

// The probe the compose health checks run in the distroless images: built
// as deploy/Dockerfile builds it (its own module, outside the workspace),
// it exits 0 only for a 200.
func TestHealthcheckProbe(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "healthcheck")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = repoPath(t, "deploy/healthcheck")
	build.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build deploy/healthcheck: %v\n%s", err, out)
	}
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	run := func() int {
		err := exec.Command(bin, srv.URL+"/readyz").Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &exit):
			return exit.ExitCode()
		default:
			t.Fatal(err)
			return -1
		}
	}
	if code := run(); code != 0 {
		t.Errorf("probe of a ready service exited %d", code)
	}
	status = http.StatusServiceUnavailable
	if code := run(); code != 1 {
		t.Errorf("probe of an unready service exited %d, want 1", code)
	}
	srv.Close()
	if code := run(); code != 1 {
		t.Errorf("probe of a stopped service exited %d, want 1", code)
	}
}

// `make images` builds every image from deploy/Dockerfile with the names
// docker-compose.yml uses. A stand-in docker on PATH records each call, so
// no engine is needed.
func TestMakeImages(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	fake := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + log + "\n"
	if err := os.WriteFile(filepath.Join(dir, "docker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "--no-print-directory", "images")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "PATH="+dir+string(filepath.ListSeparator)+os.Getenv("PATH"), "IMAGE_PREFIX=", "IMAGE_TAG=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make images: %v\n%s", err, out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	calls := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := map[string]string{} // tag -> the build's distinguishing args
	for _, s := range []string{"authn", "policy", "audit", "reaper", "gateway", "aigov", "devstack"} {
		want["aigov/"+s+":dev"] = "--target service --build-arg SERVICE=" + s
	}
	want["aigov/demo:dev"] = "--target demo"
	want["aigov/mcpdemo:dev"] = "--target mcpdemo"
	for _, call := range calls {
		f := strings.Fields(call)
		i := slices.Index(f, "-t")
		if len(f) < 2 || f[0] != "build" || i < 0 || i+1 >= len(f) || f[len(f)-1] != "." || !strings.Contains(call, "-f deploy/Dockerfile") {
			t.Errorf("unexpected docker call %q", call)
			continue
		}
		tag := f[i+1]
		if args, ok := want[tag]; !ok || !strings.Contains(call, args) {
			t.Errorf("docker %q: tag %s is not built with %q", call, tag, args)
		}
		delete(want, tag)
	}
	for tag := range want {
		t.Errorf("make images does not build %s", tag)
	}
	// Compose runs the images make builds.
	c := compose(t)
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Build == nil {
			continue
		}
		target := s.Build.Target
		svc := s.Build.Args["SERVICE"]
		if target == "demo" || target == "mcpdemo" {
			svc = target
		}
		if s.Image != "aigov/"+svc+":dev" {
			t.Errorf("compose %s: image %q, built as target %s SERVICE=%s", name, s.Image, target, s.Build.Args["SERVICE"])
		}
	}
}
