package schemas_test

import (
	"errors"
	"testing"

	"github.com/aigov/aigov/schemas"
)

func TestSubjects(t *testing.T) {
	t.Parallel()
	def := schemas.NewSubjects("")
	acme := schemas.NewSubjects("acme")
	cases := []struct{ got, want string }{
		{def.Request("model.retrain"), "aigov.request.model.retrain"},
		{def.Verified("model.retrain"), "aigov.verified.model.retrain"},
		{def.Decision("model.retrain"), "aigov.decision.model.retrain"},
		{def.Session(schemas.SessionExpired), "aigov.session.expired"},
		{def.All(schemas.KindDecision), "aigov.decision.>"},
		{acme.Request("dataset.promote"), "acme.request.dataset.promote"},
		{acme.All(schemas.KindSession), "acme.session.>"},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
}

func TestActionOf(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		prefix  string
		kind    string
		subject string
		want    string // empty: an error
	}{
		{"request", "", schemas.KindRequest, "aigov.request.model.retrain", "model.retrain"},
		{"decision", "", schemas.KindDecision, "aigov.decision.dataset.promote", "dataset.promote"},
		{"custom prefix", "acme", schemas.KindVerified, "acme.verified.model.deploy", "model.deploy"},
		{"one token action", "", schemas.KindRequest, "aigov.request.retrain", "retrain"},
		{"wrong kind", "", schemas.KindRequest, "aigov.decision.model.retrain", ""},
		{"wrong prefix", "", schemas.KindRequest, "acme.request.model.retrain", ""},
		{"prefix of the prefix", "aigov", schemas.KindRequest, "aigovx.request.model.retrain", ""},
		{"no action", "", schemas.KindRequest, "aigov.request.", ""},
		{"kind only", "", schemas.KindRequest, "aigov.request", ""},
		{"empty", "", schemas.KindRequest, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := schemas.NewSubjects(tc.prefix).ActionOf(tc.kind, tc.subject)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ActionOf(%s, %q) = %q, want an error", tc.kind, tc.subject, got)
				}
				if !errors.Is(err, schemas.ErrInvalidEvent) {
					t.Fatalf("error %v does not wrap ErrInvalidEvent", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ActionOf(%s, %q) = %q, %v; want %q", tc.kind, tc.subject, got, err, tc.want)
			}
		})
	}
}

func TestCheckpointSubjects(t *testing.T) {
	t.Parallel()
	s := schemas.NewSubjects("acme")
	if got := s.Checkpoint("ACME_DECISIONS"); got != "acme.audit.checkpoints.ACME_DECISIONS" {
		t.Errorf("Checkpoint = %s", got)
	}
	if got := s.Checkpoints(); got != "acme.audit.checkpoints.>" {
		t.Errorf("Checkpoints = %s", got)
	}
	for subject, want := range map[string]string{
		"acme.audit.checkpoints.ACME_DECISIONS":  "ACME_DECISIONS",
		"acme.audit.checkpoints.":                "",
		"acme.audit.checkpoints.A.B":             "",
		"aigov.audit.checkpoints.ACME_DECISIONS": "",
	} {
		if got, ok := s.CheckpointStream(subject); ok != (want != "") || (ok && got != want) {
			t.Errorf("CheckpointStream(%s) = %q, %v; want %q", subject, got, ok, want)
		}
	}
}
