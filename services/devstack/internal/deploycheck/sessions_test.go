package deploycheck

import "testing"

// sessionVars are the session limits the reaper ends sessions by and authn
// and policy check again from the token, so that max age holds while the
// reaper is down (services/servicekit/sessionlimits). The three must agree: a shorter
// value in authn would deny sessions the reaper keeps, a longer one would
// let a session past the reaper's max age in during a reaper outage.
var sessionVars = []string{"AIGOV_SESSION_MAX_AGE", "AIGOV_REAPER_CONFIG"}

// sessionServices read sessionVars.
var sessionServices = []string{"reaper", "authn", "policy"}

// Every service that enforces the session max age gets the same settings,
// in docker-compose.yml and in the Kubernetes Deployments; the max age is
// set explicitly for each.
func TestSessionLimitsAgree(t *testing.T) {
	c := compose(t)
	ms := loadManifests(t)
	g := loadGenerated(t, ms)
	for _, name := range sessionVars {
		composeVals, k8sVals := map[string]string{}, map[string]string{}
		for _, svc := range sessionServices {
			composeVals[svc] = c.service(t, svc).Environment[name]
			_, ctr := serviceContainer(t, ms, svc)
			vals, _ := k8sEnv(g, ctr)
			k8sVals[svc] = vals[name]
		}
		for where, vals := range map[string]map[string]string{"docker-compose.yml": composeVals, "deploy/k8s": k8sVals} {
			for _, svc := range sessionServices[1:] {
				if vals[svc] != vals["reaper"] {
					t.Errorf("%s: %s=%q for %s but %q for the reaper; authn, policy and the reaper must end sessions alike",
						where, name, vals[svc], svc, vals["reaper"])
				}
			}
			if name == "AIGOV_SESSION_MAX_AGE" && vals["reaper"] == "" {
				t.Errorf("%s: %s is not set for the reaper; set it explicitly for reaper, authn and policy", where, name)
			}
		}
	}
}
