package deploycheck

import (
	"errors"
	"flag"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// volumeFile maps a path inside service s to (named volume, path inside
// the volume), by the longest mount holding it; ok is false when no named
// volume holds it.
func volumeFile(c composeFile, s composeService, p string) (vol, rel string, ok bool) {
	target := ""
	for mnt, src := range s.mounts() {
		if _, named := c.Volumes[src]; named && under(p, mnt) && len(mnt) > len(target) {
			target, vol = mnt, src
		}
	}
	if target == "" {
		return "", "", false
	}
	return vol, strings.TrimPrefix(path.Clean(p), path.Clean(target)), true
}

// flagValue is the argument after name in args.
func flagValue(args []string, name string) string {
	if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// In compose NATS requires TLS with the certificate the one-shot certs
// service makes (for the host name the services dial), starts only after
// it, and every client dials tls:// and verifies NATS against that CA.
func TestComposeNATSTLS(t *testing.T) {
	c := compose(t)
	certs, ns := c.service(t, "certs"), c.service(t, "nats")
	if len(certs.Command) == 0 || certs.Command[0] != "dev-certs" || certs.Build == nil || certs.Build.Args["SERVICE"] != "aigov" {
		t.Fatalf("certs: command %q build %+v, want the aigov image running dev-certs", certs.Command, certs.Build)
	}
	if certs.Restart != "no" {
		t.Errorf("certs restart %q: a one-shot must not be restarted", certs.Restart)
	}
	vol, dir, ok := volumeFile(c, certs, flagValue(certs.Command, "--dir"))
	if !ok {
		t.Fatalf("certs writes %q outside any named volume (%v)", flagValue(certs.Command, "--dir"), certs.Volumes)
	}
	for mnt, src := range certs.mounts() {
		if src == vol {
			// The image must make the mount point writable for its user.
			checkImageDirOwned(t, mnt)
		}
	}
	hosts := strings.Split(flagValue(certs.Command, "--hosts"), ",")

	if ns.DependsOn["certs"].Condition != "service_completed_successfully" {
		t.Errorf("nats must start after certs completed, got %+v", ns.DependsOn)
	}
	if !slices.Contains(ns.Command, "--tls") {
		t.Errorf("nats command %q does not require TLS (--tls)", ns.Command)
	}
	for flagName, file := range map[string]string{"--tlscert": devcerts.ServerCertFile, "--tlskey": devcerts.ServerKeyFile} {
		v, rel, ok := volumeFile(c, ns, flagValue(ns.Command, flagName))
		if !ok || v != vol || rel != path.Join(dir, file) {
			t.Errorf("nats %s %q is not the certs service's %s (volume %s, %s)", flagName, flagValue(ns.Command, flagName), file, vol, path.Join(dir, file))
		}
	}

	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		raw, ok := s.Environment["AIGOV_NATS_URL"]
		if !ok {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "tls" {
			t.Errorf("%s: AIGOV_NATS_URL=%q, want tls://", name, raw)
			continue
		}
		if !slices.Contains(hosts, u.Hostname()) {
			t.Errorf("%s dials %s, which the certificate (--hosts %q) is not valid for", name, u.Hostname(), hosts)
		}
		v, rel, ok := volumeFile(c, s, s.Environment["AIGOV_NATS_TLS_CA"])
		if !ok || v != vol || rel != path.Join(dir, devcerts.CAFile) {
			t.Errorf("%s: AIGOV_NATS_TLS_CA=%q is not the certs service's CA (volume %s, %s)", name, s.Environment["AIGOV_NATS_TLS_CA"], vol, path.Join(dir, devcerts.CAFile))
		}
		if s.DependsOn["nats"].Condition == "" && name != "demo" {
			t.Errorf("%s does not wait for nats", name)
		}
	}
}

// The compose NATS command line, run by nats-server's own option parser
// with a dev bundle in place of the volume: a role connects over TLS,
// verifying the server; a client that does not trust the CA is refused.
func TestComposeNATSTLSEnforced(t *testing.T) {
	c := compose(t)
	ns := c.service(t, "nats")
	bundle, err := devcerts.Ensure(t.TempDir(), "nats", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(ns.Command[1:])
	for i, a := range args {
		switch {
		case i > 0 && args[i-1] == "--config":
			args[i] = repoPath(t, "deploy/nats/nats.conf")
		case i > 0 && args[i-1] == "--tlscert":
			args[i] = bundle.ServerCert
		case i > 0 && args[i-1] == "--tlskey":
			args[i] = bundle.ServerKey
		case strings.HasPrefix(a, "/"):
			t.Fatalf("nats command has a path %q this test does not map", a)
		}
	}
	opts := configureNATS(t, args, ns.Environment)
	if opts.TLSConfig == nil {
		t.Fatal("the compose command line does not turn TLS on")
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server from the compose command line did not start")
	}
	role := schemas.RoleAudit
	creds := nats.UserInfo(role, ns.Environment[generate.NATSPasswordVar(role)])
	nc, err := nats.Connect(srv.ClientURL(), creds, nats.RootCAs(bundle.CA), nats.CustomInboxPrefix(schemas.InboxPrefix(role)), nats.NoReconnect())
	if err != nil {
		t.Fatalf("audit over TLS with the dev CA: %v", err)
	}
	nc.Close()
	other, err := devcerts.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nats.Connect(srv.ClientURL(), creds, nats.RootCAs(other.CA), nats.NoReconnect(), nats.Timeout(5*time.Second)); err == nil {
		t.Fatal("a client trusting another CA connected")
	}
}

// configureNATS runs nats-server's own command-line parsing (flags and
// the config file they name) with env set, as parseNATSConf does.
func configureNATS(t *testing.T, args []string, env map[string]string) *server.Options {
	t.Helper()
	envMu.Lock()
	defer envMu.Unlock()
	for k, v := range env {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	opts, err := server.ConfigureOptions(fs, args, func() {}, func() {}, func() {})
	if err != nil {
		t.Fatalf("nats-server cannot parse the compose command line %q: %v", args, err)
	}
	if opts == nil {
		t.Fatal(errors.New("nats-server parsed no options"))
	}
	return opts
}

// On Kubernetes NATS serves cert-manager's certificate, valid for the
// host the services dial over tls://; the services' CA is that
// certificate's ca.crt (TestK8sFileVarsAreMounted checks the mount).
func TestK8sNATSTLS(t *testing.T) {
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	var sts workload
	find(t, ms, "StatefulSet", "nats").decode(t, &sts)
	pod := sts.Spec.Template.Spec
	args := pod.Containers[0].Args
	if !slices.Contains(args, "--tls") {
		t.Fatalf("nats args %q do not require TLS", args)
	}
	var cert struct {
		Spec struct {
			SecretName string   `yaml:"secretName"`
			DNSNames   []string `yaml:"dnsNames"`
			Usages     []string `yaml:"usages"`
		} `yaml:"spec"`
	}
	find(t, ms, "Certificate", "aigov-nats-tls").decode(t, &cert)
	for _, flagName := range []string{"--tlscert", "--tlskey"} {
		p, found := flagValue(args, flagName), false
		for _, vm := range pod.Containers[0].VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name == vm.Name && v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName && under(p, vm.MountPath) {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("nats %s %q is not on a mount of Secret %s", flagName, p, cert.Spec.SecretName)
		}
	}
	u, err := url.Parse(g.configMaps["aigov-common"]["AIGOV_NATS_URL"])
	if err != nil || u.Scheme != "tls" {
		t.Fatalf("AIGOV_NATS_URL=%q, want tls://", g.configMaps["aigov-common"]["AIGOV_NATS_URL"])
	}
	if !slices.Contains(cert.Spec.DNSNames, u.Hostname()) {
		t.Errorf("the certificate's dnsNames %q do not cover %s, the host the services dial", cert.Spec.DNSNames, u.Hostname())
	}
	if !slices.Equal(cert.Spec.Usages, []string{"server auth"}) {
		t.Errorf("certificate usages %q, want server auth only", cert.Spec.Usages)
	}
	for svc := range pipelineServices {
		_, c := serviceContainer(t, ms, svc)
		env, _ := k8sEnv(g, c)
		if env["AIGOV_NATS_TLS_CA"] == "" {
			t.Errorf("aigov-%s has no AIGOV_NATS_TLS_CA", svc)
		}
	}
}
