package personal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultCacheSize bounds the keys a Cache holds: 100,000 subjects of 32
// bytes, a few MB with the map.
const DefaultCacheSize = 100_000

// Cache keeps subject keys in memory so that sealing or opening an event
// costs no KV round trip after a subject's first one. It is bounded (an
// arbitrary key is dropped when full) and watches the bucket: a key that
// is deleted or purged (erased) is dropped at once. Keys are cached only
// while the watch runs, so a broken watch never leaves an erased key in
// use: lookups then go to the bucket every time until it is back.
type Cache struct {
	store *SubjectKeys
	kv    jetstream.KeyValue
	max   int

	mu       sync.Mutex
	keys     map[string]*Key
	gen      uint64 // bumped by every erasure seen, and when the watch stops
	watching bool
}

// NewCache caches the keys of bucket kv, at most max (DefaultCacheSize
// when max <= 0).
func NewCache(kv jetstream.KeyValue, max int) *Cache {
	if max <= 0 {
		max = DefaultCacheSize
	}
	return &Cache{store: NewSubjectKeys(kv), kv: kv, max: max, keys: map[string]*Key{}}
}

// Store is the bucket behind the cache.
func (c *Cache) Store() *SubjectKeys { return c.store }

// Len is how many keys are cached.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// KeyFor returns issuer+subject's key, creating it on first use (the
// writer that first stores their personal data: authn).
func (c *Cache) KeyFor(ctx context.Context, issuer, subject string) (*Key, error) {
	keyID := SubjectKeyID(issuer, subject)
	k, gen, ok := c.cached(keyID)
	if ok {
		return k, nil
	}
	raw, _, err := c.store.GetOrCreate(ctx, issuer, subject)
	if err != nil {
		return nil, err
	}
	if k, err = NewKey(keyID, raw); err != nil {
		return nil, err
	}
	c.put(keyID, k, gen)
	return k, nil
}

// Get returns the key with id keyID, or an error wrapping ErrErased when
// there is none (readers: policy, the export).
func (c *Cache) Get(ctx context.Context, keyID string) (*Key, error) {
	k, gen, ok := c.cached(keyID)
	if ok {
		return k, nil
	}
	raw, err := c.store.Get(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if k, err = NewKey(keyID, raw); err != nil {
		return nil, err
	}
	c.put(keyID, k, gen)
	return k, nil
}

func (c *Cache) cached(keyID string) (*Key, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.keys[keyID]
	return k, c.gen, ok
}

// put caches a key read under generation gen, unless an erasure was seen
// since (the key read may be the one just erased) or no watch runs.
func (c *Cache) put(keyID string, key *Key, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.watching || c.gen != gen {
		return
	}
	if len(c.keys) >= c.max {
		for k := range c.keys { // map order: an arbitrary victim
			delete(c.keys, k)
			break
		}
	}
	c.keys[keyID] = key
}

func (c *Cache) drop(keyID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.keys, keyID)
	c.gen++
}

func (c *Cache) setWatching(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watching = on
	// Either way a new generation: a read that began before a (re)started
	// watch may have fetched a key erased before the watch could see it,
	// and must not be cached under the watch.
	c.gen++
	if !on {
		clear(c.keys)
	}
}

// Run watches the bucket for erasures until ctx ends, rewatching after a
// failure (at most every watchRetry). onErr (when not nil) is told of each
// failure: the cache then works uncached, one KV read per lookup, until the
// watch is back.
func (c *Cache) Run(ctx context.Context, onErr func(error)) error {
	for {
		err := c.watch(ctx)
		c.setWatching(false)
		if ctx.Err() != nil {
			return nil
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchRetry):
		}
	}
}

// watchRetry is the pause before a broken watch is restarted.
const watchRetry = time.Second

// Watching reports whether the erasure watch runs (keys are cached).
func (c *Cache) Watching() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watching
}

func (c *Cache) watch(ctx context.Context) error {
	// Updates only: the keys already stored are not news, erasures are.
	w, err := c.kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch subject keys: %w", err)
	}
	defer func() { _ = w.Stop() }()
	c.setWatching(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("subject key watch ended")
			}
			if e == nil {
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
				c.drop(e.Key())
			case jetstream.KeyValuePut:
				// A key created again after an erasure (the subject came
				// back) replaces nothing cached: the erasure dropped it.
			}
		}
	}
}
