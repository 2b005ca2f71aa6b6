package deploycheck

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/devstack/internal/generate"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

func checkReplicatedSchema(ctx context.Context, t *testing.T, st *stack.Stack) {
	outs, err := generate.ReplicatedSchema(ctx, st.DB)
	checkGenerated(t, outs, err)
	got := string(readFile(t, generate.ReplicatedSchemaFile))
	// Every table the migrations create is in it, replicated.
	for name := range migrationObjects(t) {
		if !strings.Contains(got, " "+stack.Database+"."+name+" ON CLUSTER") && !strings.Contains(got, " "+stack.Database+".`"+name+"` ON CLUSTER") {
			t.Errorf("%s does not create %s", generate.ReplicatedSchemaFile, name)
		}
	}
	if strings.Contains(got, "ENGINE = MergeTree") || strings.Contains(got, "ENGINE = ReplacingMergeTree") || !strings.Contains(got, "ENGINE = ReplicatedReplacingMergeTree(") {
		t.Errorf("%s has non-replicated engines", generate.ReplicatedSchemaFile)
	}
	if !slices.Contains(strings.Split(got, "\n"), "CREATE DATABASE IF NOT EXISTS "+stack.Database+" ON CLUSTER '{cluster}';") {
		t.Errorf("%s does not create the database on the cluster", generate.ReplicatedSchemaFile)
	}
}
