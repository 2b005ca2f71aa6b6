// Package kvttl writes JetStream KV values with a per-key TTL. The KV API
// takes a TTL only on Create; an Update written through it falls back to
// the bucket's TTL, so a record refreshed by updates would lose its own
// bound. Update here is the KV update (compare-and-set on the key's last
// revision) with the TTL header kept.
package kvttl

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Update replaces key's value in kv if its revision is still rev, with a
// per-key TTL of ttl. A conflicting write returns an error wrapping
// jetstream.ErrKeyRevisionMismatch. The bucket must allow per-key TTLs
// (LimitMarkerTTL) and the connection must use the default JetStream API
// prefix.
func Update(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, key string, value []byte, rev uint64, ttl time.Duration) (uint64, error) {
	msg := &nats.Msg{Subject: "$KV." + kv.Bucket() + "." + key, Data: value, Header: nats.Header{}}
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(Clamp(ttl)))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("update %s: %w: %w", key, err, jetstream.ErrKeyRevisionMismatch)
		}
		return 0, fmt.Errorf("update %s: %w", key, err)
	}
	return ack.Sequence, nil
}

// Clamp rounds a TTL up to whole seconds, at least one: the server's
// per-message TTL has second resolution.
func Clamp(ttl time.Duration) time.Duration {
	if ttl < time.Second {
		return time.Second
	}
	return ttl.Truncate(time.Second) + time.Second
}
