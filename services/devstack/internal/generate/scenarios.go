package generate

import (
	"encoding/json"
	"fmt"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/demo"
)

// ScenariosFile is what deploy/demo/play.sh plays in compose.
const ScenariosFile = "deploy/demo/scenarios.json"

// ScenarioJSON is one scenario of ScenariosFile.
type ScenarioJSON struct {
	Name     string           `json:"name"`
	Persona  string           `json:"persona"`
	Token    string           `json:"token"`
	Action   string           `json:"action"`
	Resource schemas.Resource `json:"resource"`
	Context  map[string]any   `json:"context"`
	Decision string           `json:"decision"`
	Code     string           `json:"code"`
}

// TokenKinds names demo.TokenKind in the scenarios file; play.sh knows
// each name.
func TokenKinds() map[demo.TokenKind]string {
	return map[demo.TokenKind]string{
		demo.TokenGood:            "good",
		demo.TokenExpired:         "expired",
		demo.TokenForged:          "forged",
		demo.TokenNone:            "none",
		demo.TokenAfterSessionEnd: "after_session_end",
	}
}

// Scenarios writes demo.Scenarios (what `make run` plays) as the scenarios
// file, so compose plays exactly make run's.
func Scenarios() ([]Output, error) {
	kinds := TokenKinds()
	var out []ScenarioJSON
	for _, sc := range demo.Scenarios() {
		kind, ok := kinds[sc.Token]
		if !ok {
			return nil, fmt.Errorf("scenario %q has token kind %d, which deploy/demo/play.sh does not know; teach it, then add it to TokenKinds", sc.Name, sc.Token)
		}
		out = append(out, ScenarioJSON{
			Name: sc.Name, Persona: sc.Persona, Token: kind,
			Action: sc.Request.Action, Resource: sc.Request.Resource, Context: sc.Request.Context,
			Decision: sc.Decision, Code: string(sc.Code),
		})
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode the scenarios: %w", err)
	}
	return []Output{{Path: ScenariosFile, Content: append(b, '\n'), From: "demo.Scenarios()"}}, nil
}
