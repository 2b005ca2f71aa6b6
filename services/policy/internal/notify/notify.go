// Package notify delivers approval request events to each required team's
// HTTP webhook: JSON (or a Slack-compatible text payload) signed with
// HMAC-SHA256, from a bounded queue, retried with bounded exponential
// backoff. Delivery is best effort: the signed governance event on the bus
// and its ClickHouse row are the record; a webhook only tells people.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// Headers of every delivery. The signature is "sha256=" and the hex
// HMAC-SHA256, keyed with the team's secret, of the timestamp header's
// value, a ".", and the body: a receiver recomputes it and rejects a stale
// timestamp, so a captured delivery cannot be replayed later.
const (
	HeaderSignature = "Aigov-Signature-256"
	HeaderTimestamp = "Aigov-Timestamp"
	HeaderEvent     = "Aigov-Event"
	HeaderDelivery  = "Aigov-Delivery"
)

// Payload formats.
const (
	FormatJSON  = "json"
	FormatSlack = "slack"
)

// Defaults and bounds.
const (
	DefaultQueueSize      = 1024
	DefaultMaxAttempts    = 6
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultTimeout        = 10 * time.Second
	// maxResponseBytes is how much of a response is read (and dropped).
	maxResponseBytes = 64 << 10
)

// Hook is one team's webhook.
type Hook struct {
	// URL receives a POST per event (http or https).
	URL string `json:"url"`
	// SecretFile holds the HMAC key (its content, trimmed); Secret is the
	// key itself once loaded.
	SecretFile string `json:"secret_file"`
	Secret     []byte `json:"-"`
	// Format is FormatJSON (default) or FormatSlack: {"text": "..."} for a
	// Slack (or Mattermost, Teams-compatible) incoming webhook.
	Format string `json:"format,omitempty"`
}

// LoadFile reads the webhooks file (AIGOV_APPROVAL_WEBHOOKS_FILE): a JSON
// object of team name to Hook, each secret read from its secret_file.
// Every violation is reported at once.
func LoadFile(path string) (map[string]Hook, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("approval webhooks: %w", err)
	}
	var hooks map[string]Hook
	if err := json.Unmarshal(b, &hooks); err != nil {
		return nil, fmt.Errorf("approval webhooks %s: %w", path, err)
	}
	var errs []error
	for team, h := range hooks {
		if h.SecretFile == "" {
			errs = append(errs, fmt.Errorf("team %q: secret_file is required (deliveries are signed)", team))
			continue
		}
		s, err := os.ReadFile(h.SecretFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("team %q: %w", team, err))
			continue
		}
		h.Secret = bytes.TrimSpace(s)
		hooks[team] = h
	}
	if err := validate(hooks); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("approval webhooks %s: %w", path, errors.Join(errs...))
	}
	return hooks, nil
}

func validate(hooks map[string]Hook) error {
	var errs []error
	for team, h := range hooks {
		u, err := url.Parse(h.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("team %q: url %q must be an http(s) URL", team, h.URL))
		}
		if len(h.Secret) < 16 {
			errs = append(errs, fmt.Errorf("team %q: the secret must be at least 16 bytes", team))
		}
		if h.Format != "" && h.Format != FormatJSON && h.Format != FormatSlack {
			errs = append(errs, fmt.Errorf("team %q: format %q must be %s or %s", team, h.Format, FormatJSON, FormatSlack))
		}
	}
	return errors.Join(errs...)
}

// Options configure Webhooks; zero values take the defaults.
type Options struct {
	// Hooks are the webhooks by team name.
	Hooks map[string]Hook
	// Client sends the deliveries; default one with DefaultTimeout.
	Client *http.Client
	// QueueSize bounds the deliveries waiting; past it new ones are
	// dropped and logged (Notify never blocks a decision).
	QueueSize int
	// MaxAttempts bounds the tries of one delivery; InitialBackoff doubles
	// after each failed try, up to MaxBackoff.
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Log            zerolog.Logger
	// Clock stamps deliveries; default time.Now.
	Clock func() time.Time
}

// delivery is one event for one team.
type delivery struct {
	team string
	hook Hook
	ev   schemas.ApprovalEvent
}

// Webhooks delivers approval events; it implements decide.Notifier. Run
// does the sending, until its ctx ends.
type Webhooks struct {
	opts  Options
	queue chan delivery
	log   zerolog.Logger
}

// New checks the hooks and sizes the queue.
func New(opts Options) (*Webhooks, error) {
	if err := validate(opts.Hooks); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: DefaultTimeout}
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &Webhooks{opts: opts, queue: make(chan delivery, opts.QueueSize), log: opts.Log.With().Str("component", "notify").Logger()}, nil
}

// Notify queues ev for the webhook of every team it requires; it never
// blocks: a full queue drops the delivery (logged).
func (w *Webhooks) Notify(ev schemas.ApprovalEvent) {
	seen := map[string]bool{}
	for _, r := range ev.Requirements {
		h, ok := w.opts.Hooks[r.Team]
		if !ok || seen[r.Team] {
			continue
		}
		seen[r.Team] = true
		select {
		case w.queue <- delivery{team: r.Team, hook: h, ev: ev}:
		default:
			w.log.Warn().Str("team", r.Team).Str("approval_id", ev.ApprovalID).Str("event", ev.Event).
				Int("queue_size", w.opts.QueueSize).Msg("webhook queue full; notification dropped")
		}
	}
}

// Run sends queued deliveries one at a time until ctx ends; what is still
// queued then is dropped (logged), as the events themselves are stored.
func (w *Webhooks) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			if n := len(w.queue); n > 0 {
				w.log.Warn().Int("dropped", n).Msg("webhook deliveries not sent before shutdown")
			}
			return nil
		case d := <-w.queue:
			w.deliver(ctx, d)
		}
	}
}

// deliver tries one delivery up to MaxAttempts times. A 2xx ends it; a
// network error, 408, 429 or 5xx is retried after the backoff; any other
// status is final (the receiver refused it).
func (w *Webhooks) deliver(ctx context.Context, d delivery) {
	body, err := Body(d.team, d.hook.Format, d.ev)
	if err != nil {
		w.log.Error().Err(err).Str("team", d.team).Msg("webhook payload not built")
		return
	}
	id := schemas.DerivedID(d.ev.ApprovalID+"/"+d.ev.Event+"/"+d.ev.ReviewerID+"/"+d.team, "webhook")
	backoff := w.opts.InitialBackoff
	log := w.log.With().Str("team", d.team).Str("approval_id", d.ev.ApprovalID).Str("event", d.ev.Event).Str("delivery", id).Logger()
	for attempt := 1; attempt <= w.opts.MaxAttempts; attempt++ {
		status, err := w.post(ctx, d, id, body)
		switch {
		case err == nil && status/100 == 2:
			log.Debug().Int("attempt", attempt).Int("status", status).Msg("webhook delivered")
			return
		case err == nil && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests && status < 500:
			log.Warn().Int("attempt", attempt).Int("status", status).Msg("webhook refused; not retried")
			return
		}
		ev := log.Warn().Int("attempt", attempt).Int("status", status)
		if err != nil {
			ev = ev.Err(err)
		}
		if attempt == w.opts.MaxAttempts {
			ev.Msg("webhook not delivered; giving up")
			return
		}
		ev.Dur("retry_in", backoff).Msg("webhook delivery failed; retrying")
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, w.opts.MaxBackoff)
	}
}

func (w *Webhooks) post(ctx context.Context, d delivery, id string, body []byte) (int, error) {
	ts := strconv.FormatInt(w.opts.Clock().Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.hook.URL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "aigov-policy")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(d.hook.Secret, ts, body))
	req.Header.Set(HeaderEvent, schemas.TypeOfApprovalEvent(d.ev.Event))
	req.Header.Set(HeaderDelivery, id)
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("webhook post: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	return resp.StatusCode, nil
}

// Sign is the HeaderSignature value of body sent at timestamp ts.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a delivery's signature in constant time; receivers do the
// same (and also reject a timestamp too far from their clock).
func Verify(secret []byte, ts string, body []byte, signature string) bool {
	return hmac.Equal([]byte(Sign(secret, ts, body)), []byte(signature))
}

// Payload is the JSON format's body.
type Payload struct {
	// Type is the event's CloudEvent type, e.g. dev.aigov.approval.requested.v1.
	Type string `json:"type"`
	// Team is the team this delivery is for.
	Team string `json:"team"`
	// Text is a one-line summary for people.
	Text string `json:"text"`
	// Approval is the event's data.
	Approval schemas.ApprovalEvent `json:"approval"`
}

// Body is the delivery body for team in format.
func Body(team, format string, ev schemas.ApprovalEvent) ([]byte, error) {
	text := Text(ev)
	if format == FormatSlack {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{text})
	}
	return json.Marshal(Payload{Type: schemas.TypeOfApprovalEvent(ev.Event), Team: team, Text: text, Approval: ev})
}

// Text is the human summary of an event.
func Text(ev schemas.ApprovalEvent) string {
	needs := make([]string, 0, len(ev.Requirements))
	for _, r := range ev.Requirements {
		needs = append(needs, fmt.Sprintf("%d of %s", r.Quorum, r.Team))
	}
	who := shortID(ev.RequesterID)
	switch ev.Event {
	case schemas.ApprovalRequested:
		return fmt.Sprintf("Approval %s requested: %s wants %s on %s; needs %s, until %s. Review: aigov approvals show %s",
			ev.ApprovalID, who, ev.Action, ev.Resource, strings.Join(needs, ", "), ev.ExpiresAt.UTC().Format(time.RFC3339), ev.ApprovalID)
	case schemas.ApprovalGranted:
		return fmt.Sprintf("Approval %s granted by %s (%d so far; needs %s)", ev.ApprovalID, shortID(ev.ReviewerID), ev.Grants, strings.Join(needs, ", "))
	case schemas.ApprovalApproved:
		return fmt.Sprintf("Approval %s approved: %s may now %s on %s (%d use(s))", ev.ApprovalID, who, ev.Action, ev.Resource, ev.MaxUses)
	case schemas.ApprovalRejected:
		return fmt.Sprintf("Approval %s rejected by %s: %s on %s for %s", ev.ApprovalID, shortID(ev.ReviewerID), ev.Action, ev.Resource, who)
	default:
		return fmt.Sprintf("Approval %s %s: %s on %s for %s", ev.ApprovalID, ev.Event, ev.Action, ev.Resource, who)
	}
}

func shortID(id string) string {
	if i := strings.LastIndexByte(id, '#'); i >= 0 && i+1 < len(id) {
		return id[i+1:]
	}
	return id
}
