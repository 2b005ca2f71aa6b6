package verify_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
)

// Small hardenings (issue 18 d): an event source longer than
// schemas.MaxSourceLength is denied source_too_long, and a reply subject
// longer than schemas.MaxReplySubject, never answered, is not carried into
// the verified event either.
func TestLongSourceAndReplySubject(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	good := e.token(t, e.good, "alice")
	publish := func(t *testing.T, source, replyTo string) output {
		t.Helper()
		id := schemas.NewID()
		m, err := client.NewRequestMessage(schemas.NewSubjects(""), source, client.Call{ID: id, Token: good, Request: testRequest}, replyTo)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		return e.out.await(t, id)
	}
	t.Run("source", func(t *testing.T) {
		t.Parallel()
		o := publish(t, "platform/"+strings.Repeat("s", schemas.MaxSourceLength), "")
		var d schemas.Decision
		if err := json.Unmarshal(o.event.Data, &d); err != nil || o.event.Type != schemas.TypeDecision {
			t.Fatalf("got a %s (%v), want a deny", o.event.Type, err)
		}
		if d.Decision != schemas.Deny || d.Code != schemas.CodeSourceTooLong {
			t.Fatalf("got %s %s (%s), want deny source_too_long", d.Decision, d.Code, d.Reason)
		}
		if o := publish(t, "platform/"+strings.Repeat("s", schemas.MaxSourceLength-len("platform/")), ""); o.event.Type != schemas.TypeVerified {
			t.Fatalf("a source of exactly %d bytes: got a %s, want it verified", schemas.MaxSourceLength, o.event.Type)
		}
	})
	t.Run("reply subject", func(t *testing.T) {
		t.Parallel()
		long := schemas.InboxPrefix(schemas.RolePlatform) + "." + strings.Repeat("r", schemas.MaxReplySubject)
		o := publish(t, "platform", long)
		var v schemas.Verified
		if err := json.Unmarshal(o.event.Data, &v); err != nil || o.event.Type != schemas.TypeVerified {
			t.Fatalf("got a %s (%v), want it verified", o.event.Type, err)
		}
		if v.ReplyTo != "" {
			t.Fatalf("a %d-byte reply subject was carried into the verified event", len(v.ReplyTo))
		}
		short := schemas.InboxPrefix(schemas.RolePlatform) + ".ok"
		o = publish(t, "platform", short)
		if err := json.Unmarshal(o.event.Data, &v); err != nil || v.ReplyTo != short {
			t.Fatalf("a short reply subject: carried %q (%v), want %q", v.ReplyTo, err, short)
		}
	})
}
