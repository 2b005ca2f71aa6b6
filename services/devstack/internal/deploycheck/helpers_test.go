// Package deploycheck checks the deployment files (docker-compose.yml,
// deploy/) against each other and against the code, with no Docker engine
// and no Kubernetes cluster: `docker-compose config` validates the compose
// file, nats-server's own parser reads the NATS configs, the manifests are
// parsed as YAML, the environment variables are matched against the ones the
// services read, and the demo script and the Grafana queries run against the
// dev stack (real NATS, ClickHouse, OIDC provider and service binaries).
package deploycheck

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// root is the repository root, found once.
var root = sync.OnceValues(stack.FindRoot)

func repoRoot(t testing.TB) string {
	t.Helper()
	r, err := root()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func repoPath(t testing.TB, rel string) string {
	return filepath.Join(repoRoot(t), filepath.FromSlash(rel))
}

func readFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// installHint is printed when docker-compose is missing: the checks need
// it, and a skip would hide a broken compose file.
const installHint = "docker-compose is not installed: run scripts/install-deps.sh " +
	"(apt-get install docker-compose) or `make deps`; these checks need no Docker engine"

// dockerCompose runs docker-compose in the repository root with a clean
// environment (PATH and HOME only), so every ${VAR:-default} takes its
// default whatever the developer's shell exports.
func dockerCompose(t testing.TB, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("%s (%v)", installHint, err)
	}
	cmd := exec.Command(bin, append([]string{"-f", "docker-compose.yml"}, args...)...)
	cmd.Dir = repoRoot(t)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// composeFile is the part of `docker-compose config` output the checks
// read; the output is normalized (environment as a map, ports and volumes as
// strings, relative paths made absolute).
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string            `yaml:"context"`
		Dockerfile string            `yaml:"dockerfile"`
		Target     string            `yaml:"target"`
		Args       map[string]string `yaml:"args"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	ReadOnly bool   `yaml:"read_only"`
	Restart  string `yaml:"restart"`
}

var (
	composeOnce sync.Once
	composeCfg  composeFile
	composeErr  error
)

// compose returns the resolved compose configuration, parsed once.
func compose(t testing.TB) composeFile {
	t.Helper()
	composeOnce.Do(func() {
		out := dockerCompose(t, "config")
		composeErr = yaml.Unmarshal(out, &composeCfg)
	})
	if composeErr != nil {
		t.Fatalf("parse docker-compose config output: %v", composeErr)
	}
	if len(composeCfg.Services) == 0 {
		t.Fatal("docker-compose config listed no services")
	}
	return composeCfg
}

func (c composeFile) service(t testing.TB, name string) composeService {
	t.Helper()
	s, ok := c.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

// containerPorts returns the container side of each published port.
func (s composeService) containerPorts() map[int]bool {
	out := map[int]bool{}
	for _, p := range s.Ports {
		p = strings.TrimSuffix(p, "/tcp")
		i := strings.LastIndex(p, ":")
		if n, err := strconv.Atoi(p[i+1:]); err == nil {
			out[n] = true
		}
	}
	return out
}

// mounts maps each container path to its source (an absolute host path or
// a named volume).
func (s composeService) mounts() map[string]string {
	out := map[string]string{}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 {
			out[parts[1]] = parts[0]
		}
	}
	return out
}

// knownEnv is every AIGOV_* name that appears as a string literal in the
// non-test Go files of services/ (every service, the CLI, the runtime, the
// dev tools): the variables something actually reads.
var knownEnv = sync.OnceValues(func() (map[string]bool, error) {
	r, err := root()
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	lit := regexp.MustCompile(`^AIGOV_[A-Z0-9_]+$`)
	err = filepath.WalkDir(filepath.Join(r, "services"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if b, ok := n.(*ast.BasicLit); ok && b.Kind == token.STRING {
				if s, err := strconv.Unquote(b.Value); err == nil && lit.MatchString(s) {
					names[s] = true
				}
			}
			return true
		})
		return nil
	})
	if err == nil && len(names) == 0 {
		err = errors.New("no AIGOV_* literal found under services/")
	}
	return names, err
})

// checkEnvNames fails for every AIGOV_* name in vars that no service reads.
func checkEnvNames(t testing.TB, where string, vars []string) {
	t.Helper()
	known, err := knownEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if strings.HasPrefix(v, "AIGOV_") && !known[v] {
			t.Errorf("%s sets %s, which no service reads (no \"%s\" literal in services/*.go)", where, v, v)
		}
	}
}

// hostPort splits an address or URL authority into host and port.
func hostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: port: %v", addr, err)
	}
	return h, n
}

func itoa(n int) string { return strconv.Itoa(n) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
