// Command policy decides every verified request with Cedar: it consumes
// aigov.verified.>, evaluates the request against the policy set and the
// trusted entity store, publishes the decision on aigov.decision.<action>
// and sends it to the requester's inbox.
package main

import (
	"context"
	"fmt"

	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/policy/internal/decide"
	"github.com/aigov/aigov/services/policy/internal/notify"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(settings(), run) }

// settings are what policy reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	return servicekit.Settings{Service: "policy", Sections: []servicekit.Section{servicekit.CommonSettings(), servicekit.SessionLimitSettings(), decide.Settings()}}
}

func run(ctx context.Context, lookup servicekit.Lookup) error {
	env := servicekit.NewEnv(lookup)
	env.Declare(settings())
	common := servicekit.LoadCommon(env, "policy", "127.0.0.1:8082")
	cfg := decide.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	// Load before connecting: a broken seed must stop the start, even
	// though the bucket's active set (if any) is what will be enforced.
	set, err := engine.LoadDir(cfg.PolicyDir)
	if err != nil {
		return err
	}
	store, err := engine.LoadStore(cfg.EntitiesFile)
	if err != nil {
		return err
	}
	if err := set.ValidateEntities(store.Entities()); err != nil {
		return fmt.Errorf("%s: %w", cfg.EntitiesFile, err)
	}
	// Webhooks are read before connecting too: a broken file stops the start.
	var hookCfg map[string]notify.Hook
	if cfg.ApprovalWebhooksFile != "" {
		if hookCfg, err = notify.LoadFile(cfg.ApprovalWebhooksFile); err != nil {
			return err
		}
	}
	svc, err := servicekit.Start(ctx, common)
	if err != nil {
		return err
	}
	svc.Log.Info().Str("seed_version", set.Version()).Int("policies", len(set.PolicyIDs())).
		Int("entities", store.Len()).Str("policy_dir", cfg.PolicyDir).Msg("seed policy set loaded")
	deps := decide.Deps{
		NC: svc.NC, JS: svc.JS, Topology: svc.Topology, Seed: set, SeedEntities: store.Entities(),
		ApprovalTeams: cfg.ApprovalTeams, ApprovalTTL: cfg.ApprovalTTL,
		Log: svc.Log, Registry: svc.HTTP.Registry, Workers: cfg.Workers, RevocationsMax: cfg.RevocationsMax, SubjectKeyCacheSize: cfg.SubjectKeyCacheSize, SessionLimits: cfg.SessionLimits,
		Signer: svc.Signer, Trust: svc.Trust, SigningLinger: common.SigningLinger, Clock: common.Clock(),
	}
	var hooks *notify.Webhooks
	if hookCfg != nil {
		if hooks, err = notify.New(notify.Options{Hooks: hookCfg, Log: svc.Log}); err != nil {
			svc.NC.Close()
			return err
		}
		deps.Notifier = hooks
	}
	d, err := decide.NewService(deps)
	if err != nil {
		svc.NC.Close()
		return err
	}
	svc.HTTP.AddCheck("revocations", d.Ready)
	workers := []servicekit.Worker{d.Run}
	if hooks != nil {
		workers = append(workers, hooks.Run)
	}
	return svc.Run(ctx, workers...)
}
