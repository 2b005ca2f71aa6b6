package verify

import "github.com/aigov/aigov/services/servicekit/revocation"

// leaseDenial denies a request whose context names a job lease the reaper
// has ended (context.lease_id; tombstone under schemas.LeaseRevocationKey
// in the revocation bucket), so a job keeps no access past its lease. The
// tombstone is found by the same revocation lookup as the session's (see
// revocation.Set), so it has the same freshness and fail-closed rules.
func leaseDenial(rec *revocation.Record) *Denial {
	code, reason := rec.LeaseDenial()
	return &Denial{Code: code, Reason: reason}
}
