// Command audit is aigov's audit writer: it consumes every decision and
// session event from JetStream and writes them, in batches, to ClickHouse,
// where auditors query them with SQL. It applies the schema migrations at
// start.
package main

import (
	"context"

	"github.com/aigov/aigov/services/audit/internal/sink"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(sink.ServiceSettings(), run) }

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, sink.ServiceSettings(), sink.LoadConfig, sink.New)
}
