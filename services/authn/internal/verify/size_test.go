package verify_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
)

// Every hostile request gets a decision: an oversized token or context is
// taken by the request stream and denied by authn with its own code (an
// audited decision), never refused by the bus where nobody audits it; a
// context within the limit that JSON-escapes six-fold still travels.
func TestOversizedRequestsGetADecision(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	good := e.token(t, e.good, "alice")
	for _, tc := range []struct {
		name    string
		token   string
		context map[string]any
		want    string // event type or deny code
	}{
		// JetStream takes headers up to 64 KiB: any token up to that
		// reaches authn, whose limit is 16 KiB.
		{"40 KiB token", strings.Repeat("a", 40<<10), nil, string(schemas.CodeTokenTooLarge)},
		{"20 KiB context", good, map[string]any{"blob": strings.Repeat("x", 20<<10)}, string(schemas.CodeContextTooLarge)},
		// 11 KiB of '<' is 66 KiB once Go's encoder writes \u003c for each.
		{"11 KiB context of <", good, map[string]any{"blob": strings.Repeat("<", 11<<10)}, schemas.TypeVerified},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := schemas.NewID()
			req := testRequest
			if tc.context != nil {
				req.Context = tc.context
			}
			m, err := client.NewRequestMessage(schemas.NewSubjects(""), "test-platform", client.Call{ID: id, Token: tc.token, Request: req}, "")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
				t.Fatalf("the request stream refused a %d-byte request: %v", len(m.Data)+len(tc.token), err)
			}
			o := e.out.await(t, id)
			if o.event.Type == tc.want {
				return
			}
			var d schemas.Decision
			if err := json.Unmarshal(o.event.Data, &d); err != nil {
				t.Fatal(err)
			}
			if string(d.Code) != tc.want || d.Decision != schemas.Deny {
				t.Fatalf("got %s %s %s (%s), want %s", o.event.Type, d.Decision, d.Code, d.Reason, tc.want)
			}
			if len(o.raw) > schemas.MaxMessageBytes {
				t.Errorf("the deny is %d bytes", len(o.raw))
			}
		})
	}
}

// A token larger than JetStream's 64 KiB header limit cannot be stored at
// all: the SDK refuses it before publishing, with an error that says so,
// rather than letting the caller time out.
func TestSDKRefusesATokenTheBusCannotCarry(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	c, err := client.New(e.platNC, client.Options{Timeout: 2 * time.Second, Trust: e.keys.Trust()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Authorize(context.Background(), client.Call{Token: strings.Repeat("a", 88<<10), Request: testRequest})
	if err == nil || !errors.Is(err, client.ErrTokenTooLarge) || !strings.Contains(err.Error(), "token") {
		t.Fatalf("an 88 KB token: %v, want client.ErrTokenTooLarge", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("the refusal took %s: it waited for a decision that cannot come", time.Since(start))
	}
}
