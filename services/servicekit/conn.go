package servicekit

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/servicekit/natsconn"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// NewLogger builds the service's logger: JSON lines on stderr by default.
func NewLogger(c Common) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.LogLevel)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("AIGOV_LOG_LEVEL=%q: %w", c.LogLevel, err)
	}
	var out = zerolog.New(os.Stderr)
	if c.LogFormat == "console" {
		out = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	}
	return out.Level(level).With().Timestamp().Str("service", c.Service).Logger(), nil
}

// Connect opens the service's NATS connection and JetStream context. It
// reconnects forever: a broker restart is an outage to ride out, not a
// reason to exit. Its inbox prefix is the user's own, as the bus
// permissions require. Credentials and TLS come from natsconn, which the
// CLI uses too; a failed connect's error shows the URL redacted.
func Connect(ctx context.Context, c Common, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := natsconn.Dial(c.NATS(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.Timeout(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn().Err(err).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	)
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

// Topology returns the bus layout for this configuration.
func (c Common) Topology() topology.Topology {
	t := topology.New(c.Prefix)
	t.Replicas = c.Replicas
	return t
}
