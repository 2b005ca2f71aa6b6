// Package decide is the policy service's logic: it loads the Cedar policy
// set and the trusted entity store, turns each verified request into a Cedar
// request, decides it, and publishes the decision.
package decide

import (
	"path/filepath"

	"github.com/aigov/aigov/services/runtime"
)

// Config is the policy service's own configuration, next to runtime.Common.
type Config struct {
	// PolicyDir holds the *.cedar files (AIGOV_POLICY_DIR).
	PolicyDir string
	// EntitiesFile is the trusted entity store in Cedar's entity JSON format
	// (AIGOV_ENTITIES_FILE, default <PolicyDir>/entities.json).
	EntitiesFile string
	// Workers is how many messages are decided at once (AIGOV_POLICY_WORKERS).
	Workers int
}

// LoadConfig reads the policy service's variables; violations are recorded
// in e and reported by e.Err together with every other one.
func LoadConfig(e *runtime.Env) Config {
	dir := e.String("AIGOV_POLICY_DIR", "policies")
	return Config{
		PolicyDir:    dir,
		EntitiesFile: e.String("AIGOV_ENTITIES_FILE", filepath.Join(dir, "entities.json")),
		Workers:      e.Int("AIGOV_POLICY_WORKERS", 32, 1),
	}
}
