package mcpgw

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"time"
)

// File is the MCP gateway's configuration file (AIGOV_GATEWAY_MCP_CONFIG),
// JSON. Example: docs/gateway.md.
type File struct {
	// Resource is the canonical URL of the MCP endpoint as clients reach
	// it (e.g. https://gateway.example/mcp): the resource of the Protected
	// Resource Metadata. Required.
	Resource string `json:"resource"`
	// AuthorizationServers are the trusted OIDC issuers clients may get a
	// token from (the issuers authn trusts). At least one.
	AuthorizationServers []string `json:"authorization_servers"`
	// ScopesSupported are advertised in the metadata.
	ScopesSupported []string `json:"scopes_supported,omitempty"`
	// MaskedKeys are argument names (case-insensitive, at any depth) whose
	// values are replaced by "***" in the decision context and so in the
	// audit; the upstream still gets them. Defaults: DefaultMaskedKeys.
	MaskedKeys []string `json:"masked_keys,omitempty"`
	// ContextKeys are top-level argument names also copied to the top of
	// the decision context, where policies read them (context.read_only).
	// Defaults: DefaultContextKeys.
	ContextKeys []string `json:"context_keys,omitempty"`
	// ListCacheTTL is how long a per-tool visibility decision for one
	// token is reused by tools/list (default 30s); ListCacheSize bounds
	// the entries (default 10000).
	ListCacheTTL  Duration `json:"list_cache_ttl,omitempty"`
	ListCacheSize int      `json:"list_cache_size,omitempty"`
	// CallTimeout bounds one upstream tool call (default 30s).
	CallTimeout Duration `json:"call_timeout,omitempty"`
	// Servers are the upstream MCP servers.
	Servers []Upstream `json:"servers"`
}

// Upstream is one upstream MCP server: a command spoken to over stdio, or
// a Streamable HTTP URL. Its tools are exposed as "<name>.<tool>".
type Upstream struct {
	Name string `json:"name"`
	// Command and Args run a stdio server; Env is its whole environment
	// (KEY=value; nothing of the gateway's own is inherited).
	Command string   `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	Env     []string `json:"env,omitempty"`
	// URL of a Streamable HTTP server; Headers are sent with every request
	// (the upstream's own credentials, never the caller's token).
	URL     string            `json:"url,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a non-negative duration such as 30s", s)
	}
	*d = Duration(v)
	return nil
}

// DefaultMaskedKeys are masked unless the file lists its own.
var DefaultMaskedKeys = []string{"password", "passwd", "secret", "token", "api_key", "apikey", "authorization", "credentials", "private_key"}

// DefaultContextKeys are lifted unless the file lists its own.
var DefaultContextKeys = []string{"environment", "read_only", "dataset", "model_version"}

var upstreamName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// LoadFile reads and validates a configuration file, reporting every
// violation at once.
func LoadFile(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("mcp config: %w", err)
	}
	var f File
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("mcp config %s: %w", path, err)
	}
	if err := f.Validate(); err != nil {
		return File{}, fmt.Errorf("mcp config %s: %w", path, err)
	}
	return f, nil
}

// Validate checks the file and fills in defaults.
func (f *File) Validate() error {
	var errs []error
	if u, err := url.Parse(f.Resource); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("resource %q must be the absolute http(s) URL of the MCP endpoint", f.Resource))
	}
	if len(f.AuthorizationServers) == 0 {
		errs = append(errs, errors.New("authorization_servers must name at least one trusted issuer"))
	}
	for _, s := range f.AuthorizationServers {
		if u, err := url.Parse(s); err != nil || u.Scheme == "" || u.Host == "" {
			errs = append(errs, fmt.Errorf("authorization server %q is not an absolute URL", s))
		}
	}
	if len(f.Servers) == 0 {
		errs = append(errs, errors.New("servers must list at least one upstream MCP server"))
	}
	seen := map[string]bool{}
	for i, s := range f.Servers {
		where := fmt.Sprintf("servers[%d] (%s)", i, s.Name)
		if !upstreamName.MatchString(s.Name) || len(s.Name) > 32 {
			errs = append(errs, fmt.Errorf("%s: name must be lower-case letters, digits and _ (at most 32), starting with a letter", where))
		}
		if seen[s.Name] {
			errs = append(errs, fmt.Errorf("%s: name used twice", where))
		}
		seen[s.Name] = true
		switch {
		case s.Command == "" && s.URL == "":
			errs = append(errs, fmt.Errorf("%s: give command (stdio) or url (Streamable HTTP)", where))
		case s.Command != "" && s.URL != "":
			errs = append(errs, fmt.Errorf("%s: give command or url, not both", where))
		case s.URL != "":
			if u, err := url.Parse(s.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				errs = append(errs, fmt.Errorf("%s: url %q is not an absolute http(s) URL", where, s.URL))
			}
		}
	}
	if f.MaskedKeys == nil {
		f.MaskedKeys = DefaultMaskedKeys
	}
	if f.ContextKeys == nil {
		f.ContextKeys = DefaultContextKeys
	}
	if f.ListCacheTTL == 0 {
		f.ListCacheTTL = Duration(30 * time.Second)
	}
	if f.ListCacheSize <= 0 {
		f.ListCacheSize = 10000
	}
	if f.CallTimeout == 0 {
		f.CallTimeout = Duration(30 * time.Second)
	}
	return errors.Join(errs...)
}
