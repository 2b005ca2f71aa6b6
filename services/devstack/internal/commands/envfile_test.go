package commands

import (
	"bufio"
	"bytes"
	"context"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// parseEnv reads KEY=value lines as a shell's `set -a; .` would.
func parseEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=value", path, line)
		}
		m[k] = v
	}
	return m
}

// Every role's env file holds the URL, the role's user and password and
// the TLS CA, in that order, and a client using only those settings
// reaches the server as that role.
func TestEnvFilesPerRole(t *testing.T) {
	t.Parallel()
	ns := natsdev.StartT(t, natsdev.Options{})
	dir := t.TempDir()
	signKeys := devkeys.New(t)
	if err := stack.WriteEnvFiles(ns, signKeys, dir); err != nil {
		t.Fatal(err)
	}
	for _, role := range schemas.Roles() {
		path := filepath.Join(dir, role+".env")
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s is mode %v; it holds a password", path, fi.Mode().Perm())
		}
		raw, _ := os.ReadFile(path)
		keys := []string{}
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			keys = append(keys, strings.SplitN(l, "=", 2)[0])
		}
		want := "AIGOV_NATS_URL,AIGOV_NATS_USER,AIGOV_NATS_PASSWORD,AIGOV_NATS_TLS_CA,AIGOV_TRUST_FILE"
		if slices.Contains(devkeys.Roles, role) {
			want += ",AIGOV_SIGNING_KEY"
		}
		if got := strings.Join(keys, ","); got != want {
			t.Fatalf("%s keys %s, want %s", path, got, want)
		}
		env := parseEnv(t, path)
		if env["AIGOV_NATS_USER"] != role || env["AIGOV_NATS_TLS_CA"] != ns.CAFile() || env["AIGOV_NATS_PASSWORD"] != ns.Password(role) ||
			env["AIGOV_TRUST_FILE"] != signKeys.TrustFile {
			t.Fatalf("%s: %v", path, env)
		}
		if k := env["AIGOV_SIGNING_KEY"]; k != "" && k != signKeys.KeyFile(role) {
			t.Fatalf("%s: signing key %s", path, k)
		}
		nc, err := nats.Connect(env["AIGOV_NATS_URL"], nats.UserInfo(env["AIGOV_NATS_USER"], env["AIGOV_NATS_PASSWORD"]),
			nats.RootCAs(env["AIGOV_NATS_TLS_CA"]), nats.CustomInboxPrefix(schemas.InboxPrefix(role)))
		if err != nil {
			t.Fatalf("connect with %s: %v", path, err)
		}
		nc.Close()
	}
}

// With client certificates the env file names the role's certificate
// instead of a password.
func TestEnvFileClientCert(t *testing.T) {
	t.Parallel()
	ns := natsdev.StartT(t, natsdev.Options{ClientCerts: true})
	signKeys := devkeys.New(t)
	got := stack.EnvFile(ns, signKeys, schemas.RoleAudit)
	cert, key := ns.ClientCert(schemas.RoleAudit)
	want := "AIGOV_NATS_URL=" + ns.URL() + "\nAIGOV_NATS_USER=audit\nAIGOV_NATS_TLS_CERT=" + cert + "\nAIGOV_NATS_TLS_KEY=" + key +
		"\nAIGOV_NATS_TLS_CA=" + ns.CAFile() + "\nAIGOV_TRUST_FILE=" + signKeys.TrustFile + "\n"
	if got != want {
		t.Fatalf("env file\n%s\nwant\n%s", got, want)
	}
}

// The banner prints no password and shows the nats CLI with the TLS CA.
func TestBannerShowsTLSAndNoPassword(t *testing.T) {
	t.Parallel()
	b := Banner(".run", 19000)
	for _, want := range []string{`--tlsca "$AIGOV_NATS_TLS_CA"`, "sub _INBOX.platform.mine", "-H \"" + schemas.HeaderReplyTo + ":_INBOX.platform.mine\"", ".run/env/platform.env"} {
		if !strings.Contains(b, want) {
			t.Errorf("banner lacks %q:\n%s", want, b)
		}
	}
}

// natsCLI is the plain nats CLI (natscli): $AIGOV_NATS_CLI, else nats on
// PATH, else where scripts/install-deps.sh's go install puts it.
func natsCLI(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("AIGOV_NATS_CLI"); bin != "" {
		p, err := exec.LookPath(bin)
		if err != nil {
			t.Fatalf("AIGOV_NATS_CLI=%s: %v", bin, err)
		}
		return p
	}
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	p, err := exec.LookPath(filepath.Join(build.Default.GOPATH, "bin", "nats"))
	if err != nil {
		t.Skipf("the nats CLI is not installed (make deps, or go install github.com/nats-io/natscli/nats@v0.5.0, or set AIGOV_NATS_CLI): %v", err)
	}
	return p
}

// The plain nats CLI, given only a role's env file and --tlsca, acts as
// that role: the platform subscribes on its inbox and publishes a request
// naming it in Aigov-Reply-To, exactly as the banner shows. Without the CA
// it refuses the server.
func TestNatsCLIWithEnvFile(t *testing.T) {
	t.Parallel()
	bin := natsCLI(t)
	ns := natsdev.StartT(t, natsdev.Options{})
	dir := t.TempDir()
	if err := stack.WriteEnvFiles(ns, devkeys.New(t), dir); err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, filepath.Join(dir, schemas.RolePlatform+".env"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"--server", env["AIGOV_NATS_URL"], "--user", env["AIGOV_NATS_USER"], "--password", env["AIGOV_NATS_PASSWORD"],
		"--inbox-prefix", schemas.InboxPrefix(schemas.RolePlatform), "--timeout", "10s"}
	withCA := append([]string{"--tlsca", env["AIGOV_NATS_TLS_CA"]}, base...)

	admin, _ := ns.ConnectT(t, natsdev.AdminUser)
	requests, err := admin.SubscribeSync("aigov.request.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = admin.Flush()

	// sub on the platform's inbox; a decision sent there reaches it.
	sub := exec.CommandContext(ctx, bin, append(withCA, "sub", "_INBOX.platform.mine", "--count", "1")...)
	// natscli prints its progress and the messages on one stream or the
	// other depending on the version: read both.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	sub.Stdout, sub.Stderr = pw, pw
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	subscribed := make(chan struct{})
	var subOut bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			subOut.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "Subscribing on") {
				once = true
				close(subscribed)
			}
		}
	}()
	select {
	case <-subscribed:
	case <-ctx.Done():
		t.Fatal("nats sub never subscribed")
	}

	pub := exec.CommandContext(ctx, bin, append(withCA, "pub", "aigov.request.model.retrain",
		"-H", schemas.HeaderReplyTo+":_INBOX.platform.mine", "-H", "Nats-Msg-Id:cli-1", `{"id":"cli-1"}`)...)
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("nats pub as the platform: %v\n%s", err, out)
	}
	m, err := requests.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("the request never arrived: %v", err)
	}
	replyTo := m.Header.Get(schemas.HeaderReplyTo)
	if replyTo != "_INBOX.platform.mine" {
		t.Fatalf("request header %s = %q", schemas.HeaderReplyTo, replyTo)
	}
	if err := admin.Publish(replyTo, []byte(`{"decision":"allow"}`)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("nats sub: %v", err)
	}
	<-readDone
	if !strings.Contains(subOut.String(), `{"decision":"allow"}`) {
		t.Fatalf("nats sub printed %q", subOut.String())
	}

	// Without the CA the server is not trusted.
	out, err := exec.CommandContext(ctx, bin, append(base, "pub", "aigov.request.model.retrain", "{}")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("nats pub without --tlsca: err %v, output %s", err, out)
	}
}
