package cli

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/servicekit/natsconn"
)

// defaultNATSURL is where the CLI looks for the bus when neither
// --nats-url nor $AIGOV_NATS_URL says.
const defaultNATSURL = "nats://127.0.0.1:4222"

// connFlags are the bus connection flags every command shares, resolved
// into the same natsconn.Config the services use. The URL and the password
// fall back to the environment when the command runs, not as flag
// defaults: a default is printed by -h, and either may hold a secret.
type connFlags struct {
	lookup                                   func(string) (string, bool)
	url, user, tenant, password, creds, nkey string
	tlsCA, tlsCert, tlsKey                   string
	prefix                                   string
	// signingKey signs what the command publishes (the reaper's key, for
	// the kill switch); trustFile verifies what it receives.
	signingKey, trustFile string
}

// addConnFlags registers the connection flags on fs; defaultUser is the
// NATS role the command acts as unless --user or $AIGOV_NATS_USER says
// otherwise.
func addConnFlags(fs *flag.FlagSet, lookup func(string) (string, bool), defaultUser string) *connFlags {
	c := &connFlags{lookup: lookup}
	const urlHelp = "NATS server URL (default $AIGOV_NATS_URL, else " + defaultNATSURL + ")"
	fs.StringVar(&c.url, "nats-url", "", urlHelp)
	fs.StringVar(&c.url, "nats", "", "same as --nats-url")
	fs.StringVar(&c.user, "user", env(lookup, "AIGOV_NATS_USER", defaultUser), "NATS user, also naming the inbox _INBOX.<user> ($AIGOV_NATS_USER)")
	fs.StringVar(&c.tenant, "tenant", env(lookup, "AIGOV_NATS_TENANT", ""), "tenant account the NATS user is in (an ML platform's own account), naming the inbox _INBOX.tenant.<tenant> ($AIGOV_NATS_TENANT)")
	fs.StringVar(&c.password, "password", "", "NATS password (default $AIGOV_NATS_PASSWORD, which is never shown; prefer it: flags show in ps)")
	fs.StringVar(&c.creds, "creds", env(lookup, "AIGOV_NATS_CREDS", ""), "NATS .creds file, instead of a password ($AIGOV_NATS_CREDS)")
	fs.StringVar(&c.nkey, "nkey", env(lookup, "AIGOV_NATS_NKEY", ""), "file holding an nkey seed, instead of a password ($AIGOV_NATS_NKEY)")
	fs.StringVar(&c.tlsCA, "tls-ca", env(lookup, "AIGOV_NATS_TLS_CA", ""), "PEM CA the NATS server's certificate must chain to; makes TLS mandatory ($AIGOV_NATS_TLS_CA)")
	fs.StringVar(&c.tlsCert, "tls-cert", env(lookup, "AIGOV_NATS_TLS_CERT", ""), "PEM client certificate for mutual TLS ($AIGOV_NATS_TLS_CERT)")
	fs.StringVar(&c.tlsKey, "tls-key", env(lookup, "AIGOV_NATS_TLS_KEY", ""), "PEM key of --tls-cert ($AIGOV_NATS_TLS_KEY)")
	fs.StringVar(&c.prefix, "prefix", env(lookup, "AIGOV_SUBJECT_PREFIX", schemas.DefaultPrefix), "subject prefix ($AIGOV_SUBJECT_PREFIX)")
	fs.StringVar(&c.signingKey, "signing-key", env(lookup, "AIGOV_SIGNING_KEY", ""), "PEM Ed25519 key that signs the events the command publishes ($AIGOV_SIGNING_KEY)")
	fs.StringVar(&c.trustFile, "trust-file", env(lookup, "AIGOV_TRUST_FILE", ""), "trust file of the services' public keys; decisions not signed by one are rejected ($AIGOV_TRUST_FILE)")
	return c
}

// signer loads --signing-key; nil when none is given (what the command
// publishes is then unsigned, and the audit flags it).
func (c *connFlags) signer() (*signing.Signer, error) {
	if c.signingKey == "" {
		return nil, nil
	}
	key, err := signing.LoadOrCreateKey(c.signingKey, false)
	if err != nil {
		return nil, fmt.Errorf("--signing-key: %w", err)
	}
	return signing.NewSigner(key)
}

// trust loads --trust-file, which a command that reads decisions needs.
func (c *connFlags) trust() (*signing.Trust, error) {
	if c.trustFile == "" {
		return nil, errors.New("--trust-file (or $AIGOV_TRUST_FILE) is required: a decision is believed only when signed by a key it lists")
	}
	return signing.LoadTrust(c.trustFile)
}

// config is the connection as natsconn sees it.
func (c *connFlags) config() natsconn.Config {
	url, password := c.url, c.password
	if url == "" {
		url = env(c.lookup, "AIGOV_NATS_URL", defaultNATSURL)
	}
	if password == "" {
		password = env(c.lookup, "AIGOV_NATS_PASSWORD", "")
	}
	return natsconn.Config{
		URL: url, User: c.user, Tenant: c.tenant, Password: password, Creds: c.creds, NKeySeed: c.nkey,
		TLSCA: c.tlsCA, TLSCert: c.tlsCert, TLSKey: c.tlsKey, Name: "aigov-cli",
	}
}

// dial connects, waiting at most timeout for the server. Its error names
// the redacted URL and never the password.
func (c *connFlags) dial(timeout time.Duration) (*nats.Conn, error) {
	return natsconn.Dial(c.config(), nats.Timeout(timeout))
}

// dialJS dials and opens JetStream on the connection; the caller closes
// the connection.
func (c *connFlags) dialJS(timeout time.Duration) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := c.dial(timeout)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}
