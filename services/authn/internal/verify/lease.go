package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
)

// leaseEnded denies a request whose context names a job lease the reaper
// has ended (context.lease_id; tombstone under schemas.LeaseRevocationKey
// in the revocation bucket), so a job keeps no access past its lease. A
// request naming no lease passes. Like revoked, a lookup failure is an
// error (redelivered), never "not ended".
func (v *Verifier) leaseEnded(ctx context.Context, reqCtx map[string]any) (*Denial, error) {
	id, ok := schemas.LeaseIDOf(reqCtx)
	if !ok {
		return nil, nil
	}
	kv, err := v.revocations(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, schemas.LeaseRevocationKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up tombstone of lease %s: %w", id, err)
	}
	reason := "the job lease has ended"
	var rev schemas.Revocation
	if json.Unmarshal(e.Value(), &rev) == nil && rev.Reason != "" {
		reason = rev.Reason
	}
	return &Denial{Code: schemas.CodeLeaseExpired, Reason: reason}, nil
}
