package verify

import "github.com/aigov/aigov/schemas"

// leaseDenial denies a request whose context names a job lease the reaper
// has ended (context.lease_id; tombstone under schemas.LeaseRevocationKey
// in the revocation bucket), so a job keeps no access past its lease. The
// tombstone is found by the same revocation lookup as the session's (see
// revocations), so it has the same freshness and fail-closed rules.
func leaseDenial(rec *revRecord) *Denial {
	reason := "the job lease has ended"
	if rec.readable && rec.reason != "" {
		reason = rec.reason
	}
	return &Denial{Code: schemas.CodeLeaseExpired, Reason: reason}
}
