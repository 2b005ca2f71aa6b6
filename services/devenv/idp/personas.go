package idp

// Persona is a dev/test identity the provider can log in. It is exported so
// that the demo (`make run`) and every service's tests talk about the same
// people and the same group memberships, instead of each inventing its own.
type Persona struct {
	// Subject becomes the token's `sub`; it is the stable identifier the
	// authn service and audit records key on.
	Subject string
	// Email becomes the `email` claim (always `email_verified: true`).
	Email string
	// Name becomes the `name` claim, for human-readable audit output.
	Name string
	// Groups becomes the `groups` claim; authorization policies are written
	// against these group names. Never nil: an empty slice is emitted as
	// `"groups": []` so "no groups" is distinguishable from "claim missing".
	Groups []string
	// AMR becomes the `amr` claim (how the user logged in); nil means a
	// password only, ["pwd"]. A second factor ("otp", "hwk", "mfa") makes
	// authn set context.mfa, which production changes need.
	AMR []string
}

// Personas returns the dev personas keyed by the name passed to
// Provider.Token. It builds a fresh map on every call (there is no
// package-level mutable state) so a caller that edits the result cannot
// change what another test or the provider sees.
func Personas() map[string]Persona {
	return map[string]Persona{
		// A data scientist: submits ordinary AI operation requests.
		"alice": {
			Subject: "alice",
			Email:   "alice@aigov.example",
			Name:    "Alice Archer",
			Groups:  []string{"data-scientists"},
		},
		// A data scientist who may also contribute datasets.
		"carol": {
			Subject: "carol",
			Email:   "carol@aigov.example",
			Name:    "Carol Chen",
			Groups:  []string{"dataset-contributors", "data-scientists"},
		},
		// An ML platform engineer: operates the platforms that publish requests.
		"erin": {
			Subject: "erin",
			Email:   "erin@aigov.example",
			Name:    "Erin Evans",
			Groups:  []string{"ml-platform"},
		},
		// A risk reviewer: approves or rejects what policy escalates.
		"rita": {
			Subject: "rita",
			Email:   "rita@aigov.example",
			Name:    "Rita Reyes",
			Groups:  []string{"risk-reviewers"},
		},
		// A second risk reviewer: production releases need two distinct
		// reviewers' approval (policies/models.cedar @quorum("2")).
		"ravi": {
			Subject: "ravi",
			Email:   "ravi@aigov.example",
			Name:    "Ravi Rao",
			Groups:  []string{"risk-reviewers"},
		},
		// An ML platform engineer who logs in with a hardware key as well
		// as a password: her tokens carry a second factor (context.mfa), so
		// she can release to production once the risk reviewers approve.
		"fiona": {
			Subject: "fiona",
			Email:   "fiona@aigov.example",
			Name:    "Fiona Fox",
			Groups:  []string{"ml-platform"},
			AMR:     []string{"pwd", "hwk"},
		},
		// A policy admin: may push a new policy set, which becomes active
		// only with the risk reviewers' approval of exactly that set.
		"paul": {
			Subject: "paul",
			Email:   "paul@aigov.example",
			Name:    "Paul Park",
			Groups:  []string{"policy-admins"},
		},
		// A privacy officer: answers data subjects' access requests
		// (aigov privacy export, policies/governance.cedar); no other
		// permission.
		"priya": {
			Subject: "priya",
			Email:   "priya@aigov.example",
			Name:    "Priya Patel",
			Groups:  []string{"privacy-officers"},
		},
		// An outsider: authenticates fine but belongs to no group, so every
		// group-based permission must deny them.
		"oscar": {
			Subject: "oscar",
			Email:   "oscar@aigov.example",
			Name:    "Oscar Ortiz",
			Groups:  []string{},
		},
	}
}
