package demo

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Query is one auditor's question and the plain SQL that answers it; the
// README shows the same statements.
type Query struct {
	Question string
	SQL      string
}

// Queries are the questions the demo answers from the audit tables. A
// person is found by their subject (principal_id is issuer#subject): the
// email column is sealed under the subject's key (docs/privacy.md), so
// SQL cannot match it.
func Queries(subject string) []Query {
	return []Query{
		{"Who retrained which model, and was it allowed?",
			`SELECT toString(event_time) AS at, principal_id, resource_id AS model, decision, code
FROM aigov.decisions FINAL
WHERE action = 'model.retrain'
ORDER BY event_time_us`},
		{"Denies by code",
			`SELECT code, stage, count() AS denies
FROM aigov.decisions FINAL
WHERE decision = 'deny'
GROUP BY code, stage
ORDER BY denies DESC, code`},
		{"What did " + subject + " touch?",
			`SELECT toString(event_time) AS at, action, resource_type, resource_id, decision, code
FROM aigov.decisions FINAL
WHERE principal_id LIKE '%#` + subject + `'
ORDER BY event_time_us`},
	}
}

// WaitAudited waits until every request id has its decision row.
func WaitAudited(ctx context.Context, db driver.Conn, requestIDs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var n uint64
	for time.Now().Before(deadline) {
		row := db.QueryRow(ctx, `SELECT count() FROM aigov.decisions FINAL WHERE has(?, request_id)`, requestIDs)
		if err := row.Scan(&n); err == nil && n == uint64(len(requestIDs)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("only %d of %d decisions reached ClickHouse within %s", n, len(requestIDs), timeout)
}

// PrintQuery runs a query and prints its rows as a table; every column is
// rendered with ClickHouse's own toString so any column type prints.
func PrintQuery(ctx context.Context, w io.Writer, db driver.Conn, q Query) error {
	rows, err := db.Query(ctx, q.SQL)
	if err != nil {
		return fmt.Errorf("%s: %w", q.Question, err)
	}
	defer rows.Close()
	cols := rows.Columns()
	fmt.Fprintf(w, "\n-- %s\n%s;\n\n", q.Question, q.SQL)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
	types := rows.ColumnTypes()
	for rows.Next() {
		vals := make([]any, len(cols))
		for i, t := range types {
			vals[i] = newScanTarget(t.DatabaseTypeName())
		}
		if err := rows.Scan(vals...); err != nil {
			return fmt.Errorf("%s: scan: %w", q.Question, err)
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = render(v)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s: %w", q.Question, err)
	}
	return tw.Flush()
}

func newScanTarget(dbType string) any {
	switch {
	case strings.HasPrefix(dbType, "UInt64"):
		return new(uint64)
	case strings.HasPrefix(dbType, "Array(String)"):
		return new([]string)
	default:
		return new(string)
	}
}

func render(v any) string {
	switch x := v.(type) {
	case *uint64:
		return fmt.Sprint(*x)
	case *[]string:
		return strings.Join(*x, ",")
	case *string:
		if *x == "" {
			return "-"
		}
		return *x
	default:
		return fmt.Sprint(v)
	}
}
