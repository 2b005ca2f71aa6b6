package deploycheck

import (
	"context"
	"testing"

	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// declared builds each service and reads what it declares
// (-settings-json), in generate.SettingsServices' order.
func declared(t testing.TB) []generate.Declared {
	t.Helper()
	all, err := generate.DeclaredSettings(context.Background(), repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// docs/configuration.md lists exactly the settings the services declare;
// a service that reads an undeclared variable fails at start (Env.Declare),
// so the reference is complete.
func TestSettingsDoc(t *testing.T) {
	outs, err := generate.Settings(context.Background(), repoRoot(t))
	checkGenerated(t, outs, err)
}
