package sink

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c Config)
		errs  []string
	}{
		{name: "defaults", env: map[string]string{"AIGOV_AUDIT_SIGNING_KEY": "/k", "AIGOV_TRUST_FILE": "/t"}, check: func(t *testing.T, c Config) {
			want := ClickHouseConfig{Addrs: []string{"127.0.0.1:9000"}, Database: "aigov", User: "default", Compression: CompressionNone,
				Conns: 2*len(c.Common.Topology().AuditedStreams()) + 2, StartupTimeout: time.Minute}
			if !reflect.DeepEqual(c.ClickHouse, want) {
				t.Errorf("ClickHouse = %+v, want %+v", c.ClickHouse, want)
			}
			if c.BatchSize != 50000 || c.FlushInterval != 500*time.Millisecond || c.BacklogWait() != 2*time.Second {
				t.Errorf("batch %d flush %s backlog wait %s, want 50000, 500ms and 2s", c.BatchSize, c.FlushInterval, c.BacklogWait())
			}
			if c.SigningKey != "/k" || c.CreateSigningKey || c.CheckpointInterval != time.Second || len(c.MaskFields) != 0 ||
				c.MaskMode != MaskHash || c.RetentionDays != 0 {
				t.Errorf("audit settings %+v", c)
			}
			if c.Common.Service != "audit" || c.Common.HTTPAddr != "127.0.0.1:8083" || c.Common.NATSUser != "audit" {
				t.Errorf("Common = %+v", c.Common)
			}
			if c.Common.GCPercent != GCPercent {
				t.Errorf("GCPercent %d, want the audit's own default %d", c.Common.GCPercent, GCPercent)
			}
		}},
		{name: "everything set", env: map[string]string{
			"AIGOV_CLICKHOUSE_ADDR": "ch1:9000, ch2:9000", "AIGOV_CLICKHOUSE_DATABASE": "audit_prod",
			"AIGOV_CLICKHOUSE_USER": "writer", "AIGOV_CLICKHOUSE_PASSWORD": "pw", "AIGOV_CLICKHOUSE_STARTUP_TIMEOUT": "5s",
			"AIGOV_CLICKHOUSE_COMPRESSION": "lz4",
			"AIGOV_AUDIT_BATCH_SIZE":       "10000", "AIGOV_AUDIT_FLUSH_INTERVAL": "15s", "AIGOV_AUDIT_SIGNING_KEY": "/k", "AIGOV_TRUST_FILE": "/t",
		}, check: func(t *testing.T, c Config) {
			want := ClickHouseConfig{Addrs: []string{"ch1:9000", "ch2:9000"}, Database: "audit_prod", User: "writer", Password: "pw", Compression: CompressionLZ4,
				Conns: 2*len(c.Common.Topology().AuditedStreams()) + 2, StartupTimeout: 5 * time.Second}
			// Four flush intervals would pass AckWait: the limit holds.
			if !reflect.DeepEqual(c.ClickHouse, want) || c.BatchSize != 10000 || c.FlushInterval != 15*time.Second ||
				c.BacklogWait() != 15*time.Second {
				t.Errorf("got %+v batch %d flush %s", c.ClickHouse, c.BatchSize, c.FlushInterval)
			}
		}},
		{name: "flush interval too close to AckWait", env: map[string]string{"AIGOV_AUDIT_FLUSH_INTERVAL": "20s"},
			errs: []string{"AIGOV_AUDIT_FLUSH_INTERVAL=20s must be above 0 and at most 15s"}},
		{name: "flush interval zero", env: map[string]string{"AIGOV_AUDIT_FLUSH_INTERVAL": "0s"},
			errs: []string{"AIGOV_AUDIT_FLUSH_INTERVAL=0s"}},
		{name: "every violation at once", env: map[string]string{
			"AIGOV_AUDIT_FLUSH_INTERVAL": "1m", "AIGOV_AUDIT_BATCH_SIZE": "50001",
			"AIGOV_CLICKHOUSE_DATABASE": "aigov; DROP", "AIGOV_CLICKHOUSE_STARTUP_TIMEOUT": "soon",
			"AIGOV_CLICKHOUSE_COMPRESSION": "gzip",
		}, errs: []string{`AIGOV_CLICKHOUSE_COMPRESSION: unknown compression "gzip" (want lz4, zstd or none)`, "AIGOV_AUDIT_FLUSH_INTERVAL=1m0s", "AIGOV_AUDIT_BATCH_SIZE=50001 must be at most 50000",
			"AIGOV_CLICKHOUSE_DATABASE", "AIGOV_CLICKHOUSE_STARTUP_TIMEOUT"}},
		{name: "signing key missing, bad mask mode", env: map[string]string{"AIGOV_AUDIT_MASK_MODE": "rot13"},
			errs: []string{"AIGOV_AUDIT_SIGNING_KEY is required", "AIGOV_TRUST_FILE is required", "AIGOV_AUDIT_MASK_MODE"}},
		{name: "batch size below one", env: map[string]string{"AIGOV_AUDIT_BATCH_SIZE": "0"}, errs: []string{"AIGOV_AUDIT_BATCH_SIZE"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := servicekit.NewEnv(servicekit.MapLookup(c.env))
			env.Declare(ServiceSettings())
			cfg := LoadConfig(env)
			err := env.Err()
			if len(c.errs) == 0 {
				if err != nil {
					t.Fatalf("LoadConfig: %v", err)
				}
				c.check(t, cfg)
				return
			}
			if err == nil {
				t.Fatalf("LoadConfig accepted %v", c.env)
			}
			for _, want := range c.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
