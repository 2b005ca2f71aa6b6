// Package decide is the policy service's logic: it loads the Cedar policy
// set and the trusted entity store, turns each verified request into a Cedar
// request, decides it, and publishes the decision.
package decide

import (
	"path/filepath"
	"time"

	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// Config is the policy service's own configuration, next to servicekit.Common.
type Config struct {
	// PolicyDir holds the *.cedar files and the schema (AIGOV_POLICY_DIR);
	// they seed the policy bucket when it has no active set.
	PolicyDir string
	// EntitiesFile is the trusted entity store in Cedar's entity JSON format
	// (AIGOV_ENTITIES_FILE, default <PolicyDir>/entities.json); it seeds the
	// entity bucket when it is empty.
	EntitiesFile string
	// Workers is how many messages are decided at once (AIGOV_POLICY_WORKERS).
	Workers int
	// ApprovalTeams are the groups whose members' approvals count as teams
	// in context.approvals (AIGOV_APPROVAL_TEAMS, comma-separated).
	ApprovalTeams []string
	// ApprovalTTL is how long a granted approval counts, and how long an
	// approval request stays open (AIGOV_APPROVAL_TTL).
	ApprovalTTL time.Duration
	// ApprovalWebhooksFile names the teams' webhooks for approval request
	// events (AIGOV_APPROVAL_WEBHOOKS_FILE, notify.LoadFile); empty: none.
	ApprovalWebhooksFile string
	// RevocationsMax bounds the revocation keys held in memory for the
	// decision-time recheck (AIGOV_POLICY_REVOCATIONS_MAX); above it every
	// request reads the revocation bucket.
	RevocationsMax int
	// SubjectKeyCacheSize bounds the subject keys held in memory
	// (AIGOV_SUBJECT_KEY_CACHE_SIZE).
	SubjectKeyCacheSize int
	// SessionLimits are the session max age and its rules
	// (AIGOV_SESSION_MAX_AGE, AIGOV_REAPER_CONFIG), checked again at
	// decision time.
	SessionLimits sessionlimits.Limits
}

// LoadConfig reads the policy service's variables; violations are recorded
// in e and reported by e.Err together with every other one.
func LoadConfig(e *servicekit.Env) Config {
	// Policy signs its decisions and checks authn's signature on every
	// verified event (servicekit.Common loads both).
	e.Required("AIGOV_SIGNING_KEY")
	e.Required("AIGOV_TRUST_FILE")
	dir := e.String("AIGOV_POLICY_DIR", "policies")
	return Config{
		PolicyDir:            dir,
		EntitiesFile:         e.String("AIGOV_ENTITIES_FILE", filepath.Join(dir, "entities.json")),
		Workers:              e.Int("AIGOV_POLICY_WORKERS", 32, 1),
		ApprovalTeams:        e.List("AIGOV_APPROVAL_TEAMS", []string{"risk-reviewers", "security"}),
		ApprovalTTL:          e.Duration("AIGOV_APPROVAL_TTL", 24*time.Hour),
		ApprovalWebhooksFile: e.String("AIGOV_APPROVAL_WEBHOOKS_FILE", ""),
		RevocationsMax:       e.Int("AIGOV_POLICY_REVOCATIONS_MAX", DefaultRevocationsMax, 1),
		SubjectKeyCacheSize:  e.Int("AIGOV_SUBJECT_KEY_CACHE_SIZE", personal.DefaultCacheSize, 1),
		SessionLimits:        servicekit.LoadSessionLimits(e),
	}
}
