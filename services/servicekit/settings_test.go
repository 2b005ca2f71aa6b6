package servicekit_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/servicekit"
)

// A service that declared its settings cannot read another: the read is a
// violation, named, so a setting cannot be added without its declaration.
func TestEnvRefusesUndeclaredSettings(t *testing.T) {
	decl := servicekit.Settings{Service: "x", Sections: []servicekit.Section{{Title: "x", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_A", "AIGOV_B"}, Value: 1, Min: 0, Doc: "a and b"},
	}}}}
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_A": "2", "AIGOV_C": "secret-value"}))
	e.Declare(decl)
	if e.Int("AIGOV_A") != 2 || e.IntOr("AIGOV_B", 7) != 7 {
		t.Fatal("declared settings not read")
	}
	if err := e.Err(); err != nil {
		t.Fatalf("declared reads: %v", err)
	}
	e.String("AIGOV_C")
	e.String("AIGOV_C")
	err := e.Err()
	if err == nil || !strings.Contains(err.Error(), "AIGOV_C is read but not declared") || strings.Count(err.Error(), "AIGOV_C") != 1 {
		t.Fatalf("undeclared read: %v, want one violation naming AIGOV_C", err)
	}
	if strings.Contains(err.Error(), "secret-value") {
		t.Fatalf("the violation shows the value: %v", err)
	}
	// Without declarations (tests of one part) nothing is refused.
	free := servicekit.NewEnv(servicekit.MapLookup(nil))
	free.String("AIGOV_C")
	if err := free.Err(); err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	decl.WriteHelp(&help)
	if !strings.Contains(help.String(), "AIGOV_A, AIGOV_B  1 (at least 0)") {
		t.Errorf("-h output:\n%s", help.String())
	}
	var js bytes.Buffer
	if err := decl.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back servicekit.Settings
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Names()) != 2 {
		t.Fatalf("-settings-json round trip: %v %+v", err, back)
	}
}
