package deploycheck

import (
	"bufio"
	"bytes"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/aigov/aigov/services/devenv/idp"
)

// dexConfig is the part of Dex's config file the checks read.
type dexConfig struct {
	Issuer string `yaml:"issuer"`
	Web    struct {
		HTTP string `yaml:"http"`
	} `yaml:"web"`
	Telemetry struct {
		HTTP string `yaml:"http"`
	} `yaml:"telemetry"`
	Expiry struct {
		IDTokens string `yaml:"idTokens"`
	} `yaml:"expiry"`
	OAuth2 struct {
		PasswordConnector string `yaml:"passwordConnector"`
	} `yaml:"oauth2"`
	StaticClients []struct {
		ID           string   `yaml:"id"`
		Secret       string   `yaml:"secret"`
		SecretEnv    string   `yaml:"secretEnv"`
		RedirectURIs []string `yaml:"redirectURIs"`
	} `yaml:"staticClients"`
	Connectors []struct {
		Type   string `yaml:"type"`
		ID     string `yaml:"id"`
		Config struct {
			Host       string `yaml:"host"`
			BindDN     string `yaml:"bindDN"`
			BindPW     string `yaml:"bindPW"`
			UserSearch struct {
				BaseDN   string `yaml:"baseDN"`
				Username string `yaml:"username"`
				IDAttr   string `yaml:"idAttr"`
			} `yaml:"userSearch"`
			GroupSearch struct {
				BaseDN   string `yaml:"baseDN"`
				NameAttr string `yaml:"nameAttr"`
			} `yaml:"groupSearch"`
		} `yaml:"config"`
	} `yaml:"connectors"`
}

func loadDex(t testing.TB) dexConfig {
	t.Helper()
	var d dexConfig
	if err := yaml.Unmarshal(readFile(t, "deploy/dex/config.yaml"), &d); err != nil {
		t.Fatalf("deploy/dex/config.yaml: %v", err)
	}
	return d
}

// Dex's issuer, client and connector agree with what authn trusts and with
// the containers that serve them.
func TestDexMatchesAuthn(t *testing.T) {
	c := compose(t)
	d := loadDex(t)
	authn := c.service(t, "authn").Environment
	dex := c.service(t, "dex")

	if issuers := strings.Split(authn["AIGOV_OIDC_ISSUERS"], ","); len(issuers) != 1 || issuers[0] != d.Issuer {
		t.Errorf("authn AIGOV_OIDC_ISSUERS=%q, want exactly Dex's issuer %q", authn["AIGOV_OIDC_ISSUERS"], d.Issuer)
	}
	if u, err := url.Parse(d.Issuer); err != nil || u.Scheme != "http" || strings.HasSuffix(d.Issuer, "/") {
		t.Errorf("issuer %q: want an http URL without a trailing slash (compared byte for byte with iss)", d.Issuer)
	}
	issHost, issPort := hostPort(t, d.Issuer)
	if _, ok := c.Services[issHost]; !ok || issHost != "dex" {
		t.Errorf("issuer host %q is not the dex compose service, so containers cannot reach it", issHost)
	}
	if _, p := hostPort(t, d.Web.HTTP); p != issPort || !dex.containerPorts()[p] {
		t.Errorf("Dex listens on %q, the issuer %q says port %d, published %v", d.Web.HTTP, d.Issuer, issPort, dex.Ports)
	}
	if _, p := hostPort(t, d.Telemetry.HTTP); dex.Healthcheck == nil ||
		!strings.Contains(strings.Join(dex.Healthcheck.Test, " "), "127.0.0.1:"+itoa(p)+"/healthz/ready") {
		t.Errorf("dex healthcheck %+v does not probe /healthz/ready on the telemetry port %q", dex.Healthcheck, d.Telemetry.HTTP)
	}
	if dex.mounts()["/etc/dex/config.yaml"] != repoPath(t, "deploy/dex/config.yaml") || !slices.Contains(dex.Command, "/etc/dex/config.yaml") {
		t.Errorf("dex does not serve deploy/dex/config.yaml (command %q, volumes %q)", dex.Command, dex.Volumes)
	}

	if len(d.StaticClients) != 1 {
		t.Fatalf("want one static client, got %d", len(d.StaticClients))
	}
	cl := d.StaticClients[0]
	if cl.ID != authn["AIGOV_OIDC_AUDIENCE"] {
		t.Errorf("Dex client id %q is not authn's audience AIGOV_OIDC_AUDIENCE=%q (Dex puts the client id in aud)", cl.ID, authn["AIGOV_OIDC_AUDIENCE"])
	}
	if cl.Secret != "" || cl.SecretEnv == "" || dex.Environment[cl.SecretEnv] == "" {
		t.Errorf("client secret must come from the environment: secretEnv %q, set in dex's environment: %q", cl.SecretEnv, dex.Environment[cl.SecretEnv])
	}
	if len(cl.RedirectURIs) == 0 {
		t.Error("the static client has no redirect URI for the browser flow")
	}
	for _, r := range cl.RedirectURIs {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			t.Errorf("redirect URI %q is not an absolute http(s) URL", r)
		}
	}

	// The demo asks the same issuer's token endpoint, as the same client.
	demo := c.service(t, "demo").Environment
	if demo["DEX_TOKEN_URL"] != d.Issuer+"/token" || demo["DEX_CLIENT_ID"] != cl.ID || demo["DEX_CLIENT_SECRET"] != dex.Environment[cl.SecretEnv] {
		t.Errorf("demo token endpoint %q client %q secret %q; want %s/token, %q and dex's %s",
			demo["DEX_TOKEN_URL"], demo["DEX_CLIENT_ID"], demo["DEX_CLIENT_SECRET"], d.Issuer, cl.ID, cl.SecretEnv)
	}

	// The password grant goes to the LDAP connector, which binds with the
	// directory's admin password.
	var found bool
	for _, cn := range d.Connectors {
		if cn.ID != d.OAuth2.PasswordConnector {
			continue
		}
		found = true
		if cn.Type != "ldap" {
			t.Errorf("password connector %q is %q, want ldap (static passwords carry no groups)", cn.ID, cn.Type)
		}
		h, p := hostPort(t, cn.Config.Host)
		ldap := c.service(t, "ldap").Environment
		if _, ok := c.Services[h]; !ok || p != 389 {
			t.Errorf("LDAP host %q is not the ldap compose service on 389", cn.Config.Host)
		}
		if v := strings.TrimPrefix(cn.Config.BindPW, "$"); v == cn.Config.BindPW || dex.Environment[v] == "" || dex.Environment[v] != ldap["LDAP_ADMIN_PASSWORD"] {
			t.Errorf("bindPW %q must name a variable of dex's environment equal to the ldap admin password", cn.Config.BindPW)
		}
		base := ldapBaseDN(ldap["LDAP_DOMAIN"])
		if cn.Config.BindDN != "cn=admin,"+base || !strings.HasSuffix(cn.Config.UserSearch.BaseDN, ","+base) || !strings.HasSuffix(cn.Config.GroupSearch.BaseDN, ","+base) {
			t.Errorf("bind DN %q and search bases %q, %q are not under %s (LDAP_DOMAIN=%s)", cn.Config.BindDN,
				cn.Config.UserSearch.BaseDN, cn.Config.GroupSearch.BaseDN, base, ldap["LDAP_DOMAIN"])
		}
		if cn.Config.UserSearch.Username != "uid" || cn.Config.GroupSearch.NameAttr != "cn" {
			t.Errorf("users log in by %q and groups are named by %q; the demo logs in by uid and policies name groups by cn",
				cn.Config.UserSearch.Username, cn.Config.GroupSearch.NameAttr)
		}
	}
	if !found {
		t.Errorf("oauth2.passwordConnector %q names no connector", d.OAuth2.PasswordConnector)
	}

	// The demo waits out one id_token lifetime to show token_expired.
	ttl, err := time.ParseDuration(d.Expiry.IDTokens)
	if err != nil || ttl <= 0 || ttl > 5*time.Minute {
		t.Errorf("expiry.idTokens %q: want a duration of at most 5m, which the demo waits out", d.Expiry.IDTokens)
	}
}

func ldapBaseDN(domain string) string {
	var parts []string
	for _, p := range strings.Split(domain, ".") {
		parts = append(parts, "dc="+p)
	}
	return strings.Join(parts, ",")
}

// ldifEntries parses an LDIF file into entries of attribute -> values.
func ldifEntries(t testing.TB, b []byte) []map[string][]string {
	t.Helper()
	var out []map[string][]string
	cur := map[string][]string{}
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur = map[string][]string{}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, " "):
			t.Fatalf("LDIF continuation lines are not used here: %q", line)
		default:
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				t.Fatalf("LDIF line %q", line)
			}
			cur[k] = append(cur[k], v)
		}
	}
	flush()
	return out
}

// The directory holds exactly the personas of `make run`, with their
// emails, names, groups and the passwords the demo logs in with.
func TestLDAPPersonasMatchDevPersonas(t *testing.T) {
	c := compose(t)
	base := ldapBaseDN(c.service(t, "ldap").Environment["LDAP_DOMAIN"])
	entries := ldifEntries(t, readFile(t, "deploy/dex/ldap/personas.ldif"))
	users := map[string]map[string][]string{}
	groups := map[string][]string{} // uid -> groups
	dnOf := map[string]string{}     // dn -> uid
	for _, e := range entries {
		if len(e["dn"]) != 1 || !strings.HasSuffix(e["dn"][0], ","+base) {
			t.Errorf("entry %v is not under %s", e["dn"], base)
			continue
		}
		if slices.Contains(e["objectClass"], "inetOrgPerson") {
			uid := e["uid"][0]
			users[uid] = e
			dnOf[e["dn"][0]] = uid
		}
	}
	for _, e := range entries {
		if !slices.Contains(e["objectClass"], "groupOfNames") {
			continue
		}
		for _, m := range e["member"] {
			uid, ok := dnOf[m]
			if !ok {
				t.Errorf("group %s has member %q, who is not in the directory", e["cn"], m)
				continue
			}
			groups[uid] = append(groups[uid], e["cn"][0])
		}
	}
	personas := idp.Personas()
	if got, want := sortedKeys(users), sortedKeys(personas); !slices.Equal(got, want) {
		t.Errorf("directory users %q, want the dev personas %q", got, want)
	}
	for name, p := range personas {
		u, ok := users[name]
		if !ok {
			continue
		}
		if !slices.Equal(u["mail"], []string{p.Email}) || !slices.Equal(u["cn"], []string{p.Name}) {
			t.Errorf("%s: mail %q cn %q, want %q %q", name, u["mail"], u["cn"], p.Email, p.Name)
		}
		if !slices.Equal(u["userPassword"], []string{name + "-dev-password"}) {
			t.Errorf("%s: password %q, want %s-dev-password (deploy/demo/play.sh logs in with it)", name, u["userPassword"], name)
		}
		if got, want := sortedCopy(groups[name]), sortedCopy(p.Groups); !slices.Equal(got, want) {
			t.Errorf("%s: groups %q, want %q", name, got, want)
		}
	}
	// The demo script derives each password the same way.
	if !regexp.MustCompile(`password=\$1-dev-password`).Match(readFile(t, "deploy/demo/play.sh")) {
		t.Error("deploy/demo/play.sh does not log in with <uid>-dev-password")
	}
	// And the compose LDAP container loads this very file.
	if src := c.service(t, "ldap").mounts()["/container/service/slapd/assets/config/bootstrap/ldif/custom/50-personas.ldif"]; src != repoPath(t, "deploy/dex/ldap/personas.ldif") {
		t.Errorf("the ldap service does not seed deploy/dex/ldap/personas.ldif (volumes %q)", c.service(t, "ldap").Volumes)
	}
}
