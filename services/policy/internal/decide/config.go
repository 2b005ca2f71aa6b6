// Package decide is the policy service's logic: it loads the Cedar policy
// set and the trusted entity store, turns each verified request into a Cedar
// request, decides it, and publishes the decision.
package decide

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/policy/internal/notify"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// Config is the policy service's configuration.
type Config struct {
	// Common is what every service reads (NATS, HTTP, logging, keys).
	servicekit.Common
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

	// Seed is the policy set of PolicyDir, stored as the active one when
	// the policy bucket has none (first start); nil seeds nothing and
	// waits for a push. SeedEntities, of EntitiesFile, are stored when the
	// entity bucket is empty. LoadConfig loads both.
	Seed         *engine.Set
	SeedEntities cedar.EntityMap
	// Webhooks are ApprovalWebhooksFile's, loaded by LoadConfig; nil: none.
	Webhooks map[string]notify.Hook
	// ExpirySweep is how often lapsed approval requests are marked
	// expired; zero means DefaultExpirySweep.
	ExpirySweep time.Duration
}

// DefaultHTTPAddr is policy's AIGOV_HTTP_ADDR default.
const DefaultHTTPAddr = "127.0.0.1:8082"

// LoadConfig reads the policy service's variables; violations are recorded
// in e and reported by e.Err together with every other one.
//
// It loads the seed policy set, its entities and the webhooks too, before
// the service connects: a broken seed must stop the start, even though the
// bucket's active set (if any) is what will be enforced.
func LoadConfig(e *servicekit.Env) Config {
	e.Declare(ServiceSettings()) // the defaults and bounds (again for Serve: no-op)
	dir := e.String("AIGOV_POLICY_DIR")
	c := Config{
		Common:               servicekit.LoadCommon(e, "policy", DefaultHTTPAddr),
		PolicyDir:            dir,
		EntitiesFile:         e.StringOr("AIGOV_ENTITIES_FILE", filepath.Join(dir, "entities.json")),
		Workers:              e.Int("AIGOV_POLICY_WORKERS"),
		ApprovalTeams:        e.List("AIGOV_APPROVAL_TEAMS"),
		ApprovalTTL:          e.Duration("AIGOV_APPROVAL_TTL"),
		ApprovalWebhooksFile: e.String("AIGOV_APPROVAL_WEBHOOKS_FILE"),
		RevocationsMax:       e.Int("AIGOV_POLICY_REVOCATIONS_MAX"),
		SubjectKeyCacheSize:  e.Int("AIGOV_SUBJECT_KEY_CACHE_SIZE"),
		SessionLimits:        servicekit.LoadSessionLimits(e),
	}
	set, err := engine.LoadDir(c.PolicyDir)
	if err != nil {
		e.Fail("AIGOV_POLICY_DIR: %w", err)
		return c
	}
	store, err := engine.LoadStore(c.EntitiesFile)
	if err != nil {
		e.Fail("AIGOV_ENTITIES_FILE: %w", err)
		return c
	}
	if err := set.ValidateEntities(store.Entities()); err != nil {
		e.Fail("AIGOV_ENTITIES_FILE: %s: %w", c.EntitiesFile, err)
		return c
	}
	c.Seed, c.SeedEntities = set, store.Entities()
	if c.ApprovalWebhooksFile != "" {
		if c.Webhooks, err = notify.LoadFile(c.ApprovalWebhooksFile); err != nil {
			e.Fail("AIGOV_APPROVAL_WEBHOOKS_FILE: %w", err)
		}
	}
	return c
}

// New builds the policy service on what servicekit.Start built: the
// decider, not ready until its revocation set is loaded, and the webhook
// deliveries when there are webhooks.
func New(cfg Config, deps servicekit.Deps) ([]servicekit.Worker, error) {
	s, err := NewService(cfg, deps)
	if err != nil {
		return nil, err
	}
	if cfg.Seed != nil {
		deps.Log.Info().Str("seed_version", cfg.Seed.Version()).Int("policies", len(cfg.Seed.PolicyIDs())).
			Int("entities", len(cfg.SeedEntities)).Str("policy_dir", cfg.PolicyDir).Msg("seed policy set loaded")
	}
	deps.HTTP.AddCheck("revocations", s.Ready)
	workers := []servicekit.Worker{s.Run}
	if cfg.Webhooks != nil {
		hooks, err := notify.New(notify.Options{Hooks: cfg.Webhooks, Log: deps.Log})
		if err != nil {
			return nil, fmt.Errorf("AIGOV_APPROVAL_WEBHOOKS_FILE: %w", err)
		}
		s.notify = hooks
		workers = append(workers, hooks.Run)
	}
	return workers, nil
}
