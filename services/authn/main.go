// Command authn is aigov's authentication service: it verifies the OIDC
// bearer token of every request event and publishes a verified event or an
// authn deny. Configuration is read from the environment (AIGOV_*); see
// internal/verify.LoadConfig and runtime.LoadCommon.
package main

import (
	"context"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/runtime"
)

func main() { runtime.Main(settings(), run) }

// settings are what authn reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() runtime.Settings {
	return runtime.Settings{Service: "authn", Sections: []runtime.Section{runtime.CommonSettings(), runtime.SessionLimitSettings(), verify.Settings()}}
}

func run(ctx context.Context, lookup runtime.Lookup) error {
	env := runtime.NewEnv(lookup)
	env.Declare(settings())
	common := runtime.LoadCommon(env, "authn", "127.0.0.1:8081")
	// authn signs every verified event and deny (LoadCommon reads the key).
	env.Required("AIGOV_SIGNING_KEY")
	cfg := verify.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := runtime.Start(ctx, common)
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
