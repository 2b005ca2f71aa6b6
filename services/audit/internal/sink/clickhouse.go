package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/audit/internal/migrate"
	"github.com/aigov/aigov/services/audit/migrations"
)

// Native protocol block compressions, the values of
// AIGOV_CLICKHOUSE_COMPRESSION.
const (
	CompressionLZ4  = "lz4"
	CompressionZSTD = "zstd"
	CompressionNone = "none"
)

func compressionOf(name string) (*clickhouse.Compression, error) {
	switch name {
	case CompressionLZ4:
		return &clickhouse.Compression{Method: clickhouse.CompressionLZ4}, nil
	case CompressionZSTD:
		return &clickhouse.Compression{Method: clickhouse.CompressionZSTD}, nil
	case CompressionNone:
		return &clickhouse.Compression{Method: clickhouse.CompressionNone}, nil
	}
	return nil, fmt.Errorf("unknown compression %q (want %s, %s or %s)", name, CompressionLZ4, CompressionZSTD, CompressionNone)
}

// dial opens a native-protocol connection pool to database db, of
// c.Conns connections (at least two).
func dial(c ClickHouseConfig, db string) (driver.Conn, error) {
	comp, err := compressionOf(c.Compression)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	conns := max(c.Conns, 2)
	conn, err := clickhouse.Open(&clickhouse.Options{
		TLS:      tlsCfg,
		Protocol: clickhouse.Native,
		Addr:     c.Addrs,
		Auth:     clickhouse.Auth{Database: db, Username: c.User, Password: c.Password},
		ClientInfo: clickhouse.ClientInfo{
			Products: []struct{ Name, Version string }{{Name: "aigov-audit", Version: "1"}},
		},
		DialTimeout:  5 * time.Second,
		ReadTimeout:  HandlerTimeout,
		MaxOpenConns: conns,
		// Each connection keeps the buffer of the largest block it sent
		// (tens of MB for a batch of event_log rows). Keeping only the
		// two connections of the busiest lane's two inserts, and two
		// more, warm bounds that memory; others are closed after use.
		MaxIdleConns:    min(conns, 4),
		ConnMaxLifetime: 10 * time.Minute,
		Compression:     comp,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %v: %w", c.Addrs, err)
	}
	return conn, nil
}

// tlsConfig is nil for a plain connection; otherwise TLS 1.2 or later,
// verifying the server against TLSCA or the system roots.
func (c ClickHouseConfig) tlsConfig() (*tls.Config, error) {
	if !c.Secure {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("AIGOV_CLICKHOUSE_TLS_CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("AIGOV_CLICKHOUSE_TLS_CA: %s holds no PEM certificate", c.TLSCA)
		}
	}
	return cfg, nil
}

// Open connects to ClickHouse, creates the database if needed and applies
// the migrations, then returns a pool on the audit database. It retries
// while ClickHouse is unreachable, up to c.StartupTimeout, because the
// writer and the database often start together.
func Open(ctx context.Context, c ClickHouseConfig, log zerolog.Logger) (driver.Conn, error) {
	ms, err := migrate.Load(migrations.FS())
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.StartupTimeout)
	defer cancel()
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		conn, err := openOnce(ctx, c, ms, log)
		if err == nil {
			return conn, nil
		}
		if errors.Is(err, migrate.ErrChanged) {
			return nil, err // no retry can fix an edited migration
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("clickhouse not ready within %s: %w", c.StartupTimeout, err)
		}
		log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", delay).Msg("clickhouse not ready")
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("clickhouse not ready within %s: %w", c.StartupTimeout, err)
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func openOnce(ctx context.Context, c ClickHouseConfig, ms []migrate.Migration, log zerolog.Logger) (driver.Conn, error) {
	// The audit database may not exist yet, and a connection naming it
	// would fail, so create it from "default" first.
	boot, err := dial(c, "default")
	if err != nil {
		return nil, err
	}
	err = migrate.EnsureDatabase(ctx, boot, c.Database)
	_ = boot.Close()
	if err != nil {
		return nil, err
	}
	conn, err := dial(c, c.Database)
	if err != nil {
		return nil, err
	}
	if _, err := migrate.ApplyWith(ctx, conn, c.Database, ms, migrate.Options{RetentionDays: c.RetentionDays}, log); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("migrate %s: %w", c.Database, err)
	}
	return conn, nil
}
