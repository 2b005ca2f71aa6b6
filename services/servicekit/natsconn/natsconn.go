// Package natsconn is the one way aigov's services and its CLI dial NATS:
// the user's credentials (password, .creds file or nkey seed), TLS that
// verifies the server against a given CA (and presents a client
// certificate for mutual TLS), and the user's own inbox prefix, which the
// bus permissions require. Its errors never carry a password: URLs in them
// are redacted.
package natsconn

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
)

// Config says how to reach the bus as one user. Every field maps to one
// AIGOV_NATS_* variable and one CLI flag.
type Config struct {
	// URL is a comma-separated server list (AIGOV_NATS_URL, --nats-url).
	// It may hold user:password@; errors and logs show it redacted.
	URL string
	// User names the NATS user (AIGOV_NATS_USER, --user); it also picks
	// the inbox prefix _INBOX.<user>, the only inbox the user may read.
	User string
	// Tenant is the tenant account User belongs to, for an ML platform
	// connecting in an account of its own (AIGOV_NATS_TENANT, --tenant).
	// Set, the inbox prefix is the tenant's, _INBOX.tenant.<tenant>, the
	// only inbox a tenant's user may read (topology.Topology.Accounts).
	Tenant string
	// Password authenticates User (AIGOV_NATS_PASSWORD, --password).
	Password string
	// Creds is a .creds file (user JWT and nkey seed), used instead of the
	// password (AIGOV_NATS_CREDS, --creds).
	Creds string
	// NKeySeed is a file holding the user's nkey seed, used instead of the
	// password (AIGOV_NATS_NKEY, --nkey).
	NKeySeed string
	// TLSCA is a PEM bundle of the CAs that may sign the server's
	// certificate (AIGOV_NATS_TLS_CA, --tls-ca). Set, it makes TLS
	// mandatory: the client refuses a server that does not speak it.
	TLSCA string
	// TLSCert and TLSKey are a PEM client certificate and key for mutual
	// TLS (AIGOV_NATS_TLS_CERT/AIGOV_NATS_TLS_KEY, --tls-cert/--tls-key).
	TLSCert, TLSKey string
	// Name is the connection name the server shows.
	Name string
}

// Validate reports settings that cannot work together, all at once.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.URL) == "" {
		errs = append(errs, errors.New("the NATS URL is empty"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("a TLS client certificate needs both its certificate and its key"))
	}
	if c.Creds != "" && c.NKeySeed != "" {
		errs = append(errs, errors.New("give a .creds file or an nkey seed, not both"))
	}
	if c.Tenant != "" {
		if err := schemas.ValidTenant(c.Tenant); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Options are the nats.go options for c: identity, TLS, inbox prefix and
// name. Callers add their own (timeouts, handlers).
func (c Config) Options() ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	inbox := schemas.InboxPrefix(c.User)
	if c.Tenant != "" {
		inbox = schemas.TenantInboxPrefix(c.Tenant)
	}
	opts := []nats.Option{nats.CustomInboxPrefix(inbox)}
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKeySeed != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeySeed)
		if err != nil {
			// The seed's path is safe to name; its content never is, and
			// nats.go does not quote it.
			return nil, fmt.Errorf("nkey seed %s: %w", c.NKeySeed, err)
		}
		opts = append(opts, o)
	case c.Password != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// Dial connects with c's options followed by extra. The error names the
// redacted URL and never holds the password.
func Dial(c Config, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", RedactURL(c.URL), err)
	}
	nc, err := nats.Connect(c.URL, append(opts, extra...)...)
	if errors.Is(err, nats.ErrAuthorization) {
		// The server says only "Authorization Violation": name who we
		// tried to be and with what, so the fix is obvious.
		return nil, c.scrub(fmt.Errorf("connect to %s as user %q with %s: %w (under make run, .run/env/%s.env holds that role's settings)",
			RedactURL(c.URL), c.User, c.credentialSource(), err, c.User))
	}
	if err != nil {
		return nil, c.scrub(fmt.Errorf("connect to %s: %w", RedactURL(c.URL), err))
	}
	return nc, nil
}

// credentialSource says, without the secret, what the connection
// authenticated with.
func (c Config) credentialSource() string {
	switch {
	case c.Creds != "":
		return "the credentials file " + c.Creds
	case c.NKeySeed != "":
		return "the nkey seed in " + c.NKeySeed
	case c.TLSCert != "" && c.Password == "":
		return "the client certificate " + c.TLSCert
	case c.Password == "":
		return "no password (set AIGOV_NATS_PASSWORD or --password)"
	default:
		return "a password that the server refused (AIGOV_NATS_PASSWORD or --password)"
	}
}

// RedactURL replaces the password of every URL in a comma-separated server
// list with "xxxxx", keeping the user name. A part that does not parse is
// replaced whole: it cannot be shown to be free of a secret.
func RedactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		switch {
		case err != nil:
			parts[i] = "(unparsable url)"
		case u.User != nil:
			parts[i] = u.Redacted()
		default:
			parts[i] = p
		}
	}
	return strings.Join(parts, ",")
}

// scrub makes sure no password appears in err's text, whatever a library
// put there, while keeping errors.Is working on the cause.
func (c Config) scrub(err error) error {
	msg := err.Error()
	secrets := []string{c.Password}
	for _, p := range strings.Split(c.URL, ",") {
		if u, perr := url.Parse(strings.TrimSpace(p)); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				secrets = append(secrets, pw)
			}
		}
	}
	clean := msg
	for _, s := range secrets {
		if s != "" {
			clean = strings.ReplaceAll(clean, s, "xxxxx")
		}
	}
	if clean == msg {
		return err
	}
	return &redacted{msg: clean, err: err}
}

// redacted is an error whose text had a secret taken out.
type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }

// Unwrap keeps errors.Is(err, nats.ErrAuthorization) and the like working.
func (r *redacted) Unwrap() error { return r.err }
