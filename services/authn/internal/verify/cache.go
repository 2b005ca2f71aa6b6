package verify

import (
	"sync"
	"time"
)

// cacheEntry is one verified token: what it proved, until when, and the
// key that verified it, so that the key's removal at the IdP ends it.
type cacheEntry struct {
	id     Identity
	exp    time.Time
	issuer *issuer
	keys   *keySet
	kid    string
}

// cache holds verified identities keyed by the SHA-256 of the raw token.
// It is bounded in entries; an entry is never served after its token's
// exp, nor once the key that verified it is no longer published.
// Revocation and replay are checked by the caller on every request, hit
// or miss, so the cache never hides them.
type cache struct {
	max int

	mu      sync.RWMutex
	entries map[[32]byte]*cacheEntry
}

func newCache(max int) *cache {
	if max <= 0 {
		return nil
	}
	return &cache{max: max, entries: make(map[[32]byte]*cacheEntry, min(max, 1024))}
}

// get returns the live entry for key, or nil.
func (c *cache) get(key *[32]byte, now time.Time) *cacheEntry {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	e := c.entries[*key]
	c.mu.RUnlock()
	if e == nil || !now.Before(e.exp) || !e.keys.has(e.kid) {
		return nil
	}
	return e
}

// put stores an entry, making room first: expired entries go, then
// arbitrary ones (map order) until a tenth of the cache is free, so a
// full cache costs one sweep per tenth of its size, not one per insert.
func (c *cache) put(key *[32]byte, e *cacheEntry, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		target := c.max - max(1, c.max/10)
		for k, old := range c.entries {
			if !now.Before(old.exp) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) <= target {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[*key] = e
}

// len reports the number of entries, for tests and metrics.
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
