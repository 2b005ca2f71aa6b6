package decide

import (
	"time"

	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// ServiceSettings are everything policy reads, declared: reading anything
// else fails the start, and docs/configuration.md is generated from them.
func ServiceSettings() servicekit.Settings {
	// Policy signs its decisions and checks authn's signature on every
	// verified event.
	common := servicekit.CommonSettings().Require("AIGOV_SIGNING_KEY", "AIGOV_TRUST_FILE")
	return servicekit.Settings{Service: "policy", Sections: []servicekit.Section{common, servicekit.SessionLimitSettings(), Settings()}}
}

// Settings are the settings policy reads besides the common ones: the
// source of its -h and of its table in docs/configuration.md.
func Settings() servicekit.Section {
	return servicekit.Section{Title: "policy", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_POLICY_DIR"}, Value: "policies", Doc: "the seed policy set; stored only when `aigov_policy` has no active set; afterwards push with `aigov policy push`. A broken seed stops the start"},
		{Names: []string{"AIGOV_ENTITIES_FILE"}, Default: "`<AIGOV_POLICY_DIR>/entities.json`", Doc: "the seed entity store; stored only when `aigov_entities` is empty; afterwards use `aigov entities`"},
		{Names: []string{"AIGOV_POLICY_WORKERS"}, Value: 32, Min: 1, Doc: "requests decided at once"},
		{Names: []string{"AIGOV_APPROVAL_TEAMS"}, Value: []string{"risk-reviewers", "security"}, Doc: "groups whose members' approvals count, as those team names, in `context.approvals`"},
		{Names: []string{"AIGOV_APPROVAL_TTL"}, Value: 24 * time.Hour, Doc: "how long an `approval.grant` counts, and how long an approval request stays open (pending or approved and unused)"},
		{Names: []string{"AIGOV_APPROVAL_WEBHOOKS_FILE"}, Doc: "JSON file of team → webhook (`url`, `secret_file`, `format` `json` or `slack`): approval request events are POSTed to each required team's hook, signed with HMAC-SHA256 ([approvals.md](approvals.md#notifications))"},
		{Names: []string{"AIGOV_POLICY_REVOCATIONS_MAX"}, Value: DefaultRevocationsMax, Min: 1, Doc: "keys of `aigov_revocations` held in memory for the decision-time re-check; above it every request reads the bucket instead (as `AIGOV_AUTHN_REVOCATIONS_MAX` for authn)"},
		{Names: []string{"AIGOV_SUBJECT_KEY_CACHE_SIZE"}, Value: personal.DefaultCacheSize, Min: 1, Doc: "subject keys held in memory to open sealed fields for Cedar ([privacy.md](privacy.md))"},
	}}
}
