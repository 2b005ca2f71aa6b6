// Package webhook is the dev stack's approval webhook receiver: a small
// HTTP server that takes the policy service's approval request
// notifications (AIGOV_APPROVAL_WEBHOOKS_FILE) for each team, checks their
// HMAC signature and timestamp as any receiver must, and keeps them for the
// demo and the tests to show. It verifies with its own code, from the
// documented format (docs/approvals.md), not the sender's.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The delivery headers (docs/approvals.md, Notifications).
const (
	headerTimestamp = "Aigov-Timestamp"
	headerSignature = "Aigov-Signature-256"
	headerEvent     = "Aigov-Event"
	headerDelivery  = "Aigov-Delivery"
)

// Bounds.
const (
	// MaxBody is the largest delivery read; a larger one is refused.
	MaxBody = 1 << 20
	// MaxNotes is how many verified notifications are kept (the oldest go).
	MaxNotes = 1024
	// MaxSkew is how far a delivery's timestamp may be from this clock.
	MaxSkew = 5 * time.Minute
)

// Note is one verified delivery.
type Note struct {
	Team, Type, Delivery, Text string
	// Event ("requested", "granted"...) and ApprovalID come from the JSON
	// payload's approval.
	Event, ApprovalID string
	Received          time.Time
	// Seq numbers the notes from 1, in the order they arrived.
	Seq uint64
}

// Options configure a receiver.
type Options struct {
	// Teams are the teams it takes deliveries for (a path each:
	// /hooks/<team>); each gets a fresh random secret.
	Teams []string
	// FailFirst answers the first n deliveries 503 (after verifying them),
	// so the sender's retry is seen.
	FailFirst int
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// Receiver is a running receiver; Close stops it.
type Receiver struct {
	srv     *http.Server
	ln      net.Listener
	secrets map[string][]byte
	clock   func() time.Time
	done    chan struct{}

	mu       sync.Mutex
	notes    []Note
	rejected int
	failing  int
	tries    int
	seq      uint64
	changed  chan struct{} // closed and replaced on every new note
}

// Start listens on a free loopback port.
func Start(opts Options) (*Receiver, error) {
	if len(opts.Teams) == 0 {
		return nil, errors.New("webhook: no teams")
	}
	r := &Receiver{secrets: map[string][]byte{}, clock: opts.Clock, failing: opts.FailFirst, changed: make(chan struct{}), done: make(chan struct{})}
	if r.clock == nil {
		r.clock = time.Now
	}
	for _, t := range opts.Teams {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("webhook: secret: %w", err)
		}
		r.secrets[t] = []byte(hex.EncodeToString(b))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook: listen: %w", err)
	}
	r.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hooks/{team}", r.handle)
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second}
	go func() {
		defer close(r.done)
		_ = r.srv.Serve(ln) // ErrServerClosed on Close
	}()
	return r, nil
}

// URL is team's webhook URL.
func (r *Receiver) URL(team string) string {
	return "http://" + r.ln.Addr().String() + "/hooks/" + team
}

// Close stops the server and waits for it.
func (r *Receiver) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.srv.Shutdown(ctx)
	<-r.done
	return err
}

// WriteConfig writes each team's secret (mode 0600) and the webhooks file
// the policy service reads into dir, and returns the file's path.
func (r *Receiver) WriteConfig(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("webhook config: %w", err)
	}
	type hook struct {
		URL        string `json:"url"`
		SecretFile string `json:"secret_file"`
		Format     string `json:"format"`
	}
	cfg := map[string]hook{}
	for team, secret := range r.secrets {
		f := filepath.Join(dir, team+".secret")
		if err := os.WriteFile(f, secret, 0o600); err != nil {
			return "", fmt.Errorf("webhook config: %w", err)
		}
		cfg[team] = hook{URL: r.URL(team), SecretFile: f, Format: "json"}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", fmt.Errorf("webhook config: %w", err)
	}
	path := filepath.Join(dir, "approval-webhooks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("webhook config: %w", err)
	}
	return path, nil
}

// verify checks a delivery as docs/approvals.md tells receivers to: the
// HMAC-SHA256 of "<timestamp>.<body>" with the team's secret, compared in
// constant time, and a timestamp within MaxSkew.
func verify(secret []byte, ts string, body []byte, sig string, now time.Time) error {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("timestamp %q is not Unix seconds", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxSkew || d < -MaxSkew {
		return fmt.Errorf("timestamp %s is %s from this clock", ts, d.Round(time.Second))
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return errors.New("signature does not match")
	}
	return nil
}

func (r *Receiver) handle(w http.ResponseWriter, req *http.Request) {
	team := req.PathValue("team")
	secret, ok := r.secrets[team]
	if !ok {
		http.Error(w, "unknown team", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, MaxBody+1))
	if err != nil || len(body) > MaxBody {
		http.Error(w, "body unreadable or too large", http.StatusRequestEntityTooLarge)
		return
	}
	if err := verify(secret, req.Header.Get(headerTimestamp), body, req.Header.Get(headerSignature), r.clock()); err != nil {
		r.mu.Lock()
		r.rejected++
		r.mu.Unlock()
		http.Error(w, "unauthorized: "+err.Error(), http.StatusUnauthorized)
		return
	}
	var p struct {
		Type     string `json:"type"`
		Text     string `json:"text"`
		Approval struct {
			ApprovalID string `json:"approval_id"`
			Event      string `json:"event"`
		} `json:"approval"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		http.Error(w, "not a JSON payload", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	if r.tries <= r.failing {
		http.Error(w, "failing on purpose (FailFirst)", http.StatusServiceUnavailable)
		return
	}
	n := Note{Team: team, Type: p.Type, Delivery: req.Header.Get(headerDelivery), Text: p.Text,
		Event: p.Approval.Event, ApprovalID: p.Approval.ApprovalID, Received: r.clock()}
	if n.Type == "" {
		n.Type = req.Header.Get(headerEvent)
	}
	r.seq++
	n.Seq = r.seq
	if len(r.notes) == MaxNotes {
		r.notes = r.notes[1:]
	}
	r.notes = append(r.notes, n)
	close(r.changed)
	r.changed = make(chan struct{})
	w.WriteHeader(http.StatusNoContent)
}

// Notes returns the verified deliveries kept, oldest first.
func (r *Receiver) Notes() []Note {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Note(nil), r.notes...)
}

// Since returns the kept notes numbered after seq, oldest first.
func (r *Receiver) Since(seq uint64) []Note {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Note
	for _, n := range r.notes {
		if n.Seq > seq {
			out = append(out, n)
		}
	}
	return out
}

// Stats are how many deliveries were attempted (verified ones, including
// those failed on purpose) and how many were refused as unsigned or stale.
func (r *Receiver) Stats() (tries, rejected int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tries, r.rejected
}

// Wait returns the first kept note match accepts, waiting for new ones
// until ctx ends.
func (r *Receiver) Wait(ctx context.Context, match func(Note) bool) (Note, error) {
	for {
		r.mu.Lock()
		for _, n := range r.notes {
			if match(n) {
				r.mu.Unlock()
				return n, nil
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return Note{}, fmt.Errorf("webhook: no matching delivery: %w", ctx.Err())
		case <-ch:
		}
	}
}

// String is a note as the demo prints it.
func (n Note) String() string {
	return fmt.Sprintf("notified %s: approval %s %s (signature verified)", n.Team, n.ApprovalID, n.Event)
}
