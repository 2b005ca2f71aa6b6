// Package decider is how the gateway asks aigov for a decision: it sends
// the caller's request through the SDK (schemas/client) and makes a retry
// with the same request id idempotent. JetStream drops a re-published id
// as a duplicate, so a retry would otherwise wait for a reply that never
// comes; the decider instead joins the call still in flight or returns
// the decision it already received for that id.
package decider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
)

// ErrIDConflict is returned when a request id is reused for a different
// request (another action, resource, context or token): the id is an
// idempotency key, so the second request is refused, not decided.
var ErrIDConflict = errors.New("decider: request id already used for a different request")

// Authorizer sends one request and waits for its decision;
// *client.Client is one.
type Authorizer interface {
	Authorize(ctx context.Context, call client.Call) (schemas.Decision, error)
}

// Options bound the decider's memory of recent decisions.
type Options struct {
	// Remember is how long a decision is kept for retries with the same
	// id; it should match the request stream's duplicate window (JetStream
	// de-duplicates within it). Zero means 2 minutes.
	Remember time.Duration
	// MaxRemembered bounds the decisions kept; the oldest go first. Zero
	// means 10000.
	MaxRemembered int
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Decider coalesces and remembers decisions by request id. It is safe for
// concurrent use.
type Decider struct {
	a    Authorizer
	opts Options

	mu      sync.Mutex
	flights map[string]*flight
	recent  map[string]remembered
	order   []string // request ids in the order remembered
}

type flight struct {
	key  string
	done chan struct{}
	d    schemas.Decision
	err  error
}

type remembered struct {
	key string
	// late marks a decision that arrived after its caller gave up
	// (Late): its key is unknown, so a retry is matched by the decision's
	// own action, resource and token fingerprint.
	late    bool
	d       schemas.Decision
	expires time.Time
}

// matches reports whether r answers call (whose key is key).
func (r remembered) matches(call client.Call, key string) bool {
	if !r.late {
		return r.key == key
	}
	fp := ""
	if call.Token != "" {
		fp = schemas.Fingerprint(call.Token)
	}
	return r.d.Action == call.Request.Action && r.d.Resource == call.Request.Resource && r.d.TokenFingerprint == fp
}

// New wraps a.
func New(a Authorizer, opts Options) (*Decider, error) {
	if a == nil {
		return nil, errors.New("decider: nil authorizer")
	}
	if opts.Remember <= 0 {
		opts.Remember = 2 * time.Minute
	}
	if opts.MaxRemembered <= 0 {
		opts.MaxRemembered = 10000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Decider{a: a, opts: opts, flights: map[string]*flight{}, recent: map[string]remembered{}}, nil
}

// Key identifies what a request asks, for telling a retry from a reuse of
// its id: the action, resource, context and token fingerprint.
func Key(call client.Call) (string, error) {
	ctx, err := json.Marshal(call.Request.Context) // map keys sorted
	if err != nil {
		return "", fmt.Errorf("decider: encode context: %w", err)
	}
	h := sha256.New()
	for _, part := range [][]byte{[]byte(call.Request.Action), []byte(call.Request.Resource.String()), ctx, []byte(schemas.Fingerprint(call.Token))} {
		h.Write(part)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Authorize returns the decision of call. An empty ID gets a new one. A
// call whose id is in flight waits for that call's outcome; one whose id
// was decided recently gets that decision without publishing again.
func (d *Decider) Authorize(ctx context.Context, call client.Call) (schemas.Decision, error) {
	if call.ID == "" {
		call.ID = schemas.NewID()
	}
	key, err := Key(call)
	if err != nil {
		return schemas.Decision{}, err
	}
	now := d.opts.Now()
	d.mu.Lock()
	d.expire(now)
	if r, ok := d.recent[call.ID]; ok {
		d.mu.Unlock()
		if !r.matches(call, key) {
			return schemas.Decision{}, fmt.Errorf("%w: %s", ErrIDConflict, call.ID)
		}
		return r.d, nil
	}
	if f, ok := d.flights[call.ID]; ok {
		d.mu.Unlock()
		if f.key != key {
			return schemas.Decision{}, fmt.Errorf("%w: %s", ErrIDConflict, call.ID)
		}
		select {
		case <-f.done:
			return f.d, f.err
		case <-ctx.Done():
			return schemas.Decision{}, fmt.Errorf("%w: request %s: %v", client.ErrTimeout, call.ID, ctx.Err())
		}
	}
	f := &flight{key: key, done: make(chan struct{})}
	d.flights[call.ID] = f
	d.mu.Unlock()

	f.d, f.err = d.a.Authorize(ctx, call)

	d.mu.Lock()
	delete(d.flights, call.ID)
	if f.err == nil {
		d.remember(call.ID, remembered{key: key, d: f.d, expires: d.opts.Now().Add(d.opts.Remember)})
	}
	d.mu.Unlock()
	close(f.done)
	return f.d, f.err
}

// Late keeps a decision that arrived for no waiting caller (the SDK's
// Options.Unclaimed), typically one decided after its caller's 504: the
// caller's retry with the same id gets it, where JetStream would drop the
// re-published request as a duplicate and nothing would answer. A decision
// already remembered under its id is kept.
func (d *Decider) Late(dec schemas.Decision) {
	if dec.RequestID == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.recent[dec.RequestID]; ok {
		return
	}
	d.remember(dec.RequestID, remembered{late: true, d: dec, expires: d.opts.Now().Add(d.opts.Remember)})
}

// remember stores r under id, dropping the oldest beyond the bound. The
// caller holds mu.
func (d *Decider) remember(id string, r remembered) {
	if _, ok := d.recent[id]; !ok {
		d.order = append(d.order, id)
	}
	d.recent[id] = r
	for len(d.order) > d.opts.MaxRemembered {
		delete(d.recent, d.order[0])
		d.order[0] = ""
		d.order = d.order[1:]
	}
}

// expire drops the decisions past their time; they are in expiry order
// because every one is kept equally long. The caller holds mu. Under a
// steady rate every call expires one: dropping it is a reslice, O(1) (a
// copy of the window here cost ~200 µs and 160 KB per call under mu at
// 10,000 remembered); append reallocates with only the live ids once the
// array's end is reached, so the dead head stays bounded by the window.
func (d *Decider) expire(now time.Time) {
	n := 0
	for n < len(d.order) {
		if r, ok := d.recent[d.order[n]]; ok && r.expires.After(now) {
			break
		}
		delete(d.recent, d.order[n])
		d.order[n] = "" // the id's memory goes with its decision
		n++
	}
	d.order = d.order[n:]
}

// Remembered is how many decisions are kept for retries.
func (d *Decider) Remembered() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.recent)
}
