// Command authn is aigov's authentication service: it verifies the OIDC
// bearer token of every request event and publishes a verified event or an
// authn deny. Configuration is read from the environment (AIGOV_*); see
// internal/verify.LoadConfig and servicekit.LoadCommon.
package main

import (
	"context"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(settings(), run) }

// settings are what authn reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	return servicekit.Settings{Service: "authn", Sections: []servicekit.Section{servicekit.CommonSettings(), servicekit.SessionLimitSettings(), verify.Settings()}}
}

func run(ctx context.Context, lookup servicekit.Lookup) error {
	env := servicekit.NewEnv(lookup)
	env.Declare(settings())
	common := servicekit.LoadCommon(env, "authn", "127.0.0.1:8081")
	// authn signs every verified event and deny (LoadCommon reads the key).
	env.Required("AIGOV_SIGNING_KEY")
	cfg := verify.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := servicekit.Start(ctx, common)
	if err != nil {
		return err
	}
	v, err := verify.New(cfg, verify.Deps{
		Log:      svc.Log,
		NC:       svc.NC,
		JS:       svc.JS,
		Topology: svc.Topology,
		Registry: svc.HTTP.Registry,
		Signer:   svc.Signer,
		Clock:    common.Clock(),

		SigningLinger: common.SigningLinger,
	})
	if err != nil {
		svc.NC.Close()
		return err
	}
	// Not ready until the revocation set is loaded; Run takes no request
	// before either.
	svc.HTTP.AddCheck("revocations", v.Ready)
	return svc.Run(ctx, v.Run)
}
