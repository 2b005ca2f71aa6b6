package natsdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// GetJSON reads key from kv and decodes its JSON value. ok is false when
// the key does not exist; any other failure is an error. Tests use it to
// look at the records services keep in KV.
func GetJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string) (v T, ok bool, err error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("natsdev: get %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return v, false, fmt.Errorf("natsdev: decode %s: %w", key, err)
	}
	return v, true, nil
}
