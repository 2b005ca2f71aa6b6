package schemas_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

func TestRequestValidate(t *testing.T) {
	t.Parallel()
	ok := schemas.Resource{Type: "Model", ID: "fraud-detector"}
	cases := []struct {
		name    string
		req     schemas.Request
		wantErr string // substring; empty means valid
	}{
		{"two words", schemas.Request{Action: "model.retrain", Resource: ok}, ""},
		{"three words, digits, underscores", schemas.Request{Action: "agent.tool_call.v2", Resource: schemas.Resource{Type: "Tool_2", ID: "x"}}, ""},
		{"context is not validated", schemas.Request{Action: "model.deploy", Resource: ok, Context: map[string]any{"anything": []any{1, "a"}}}, ""},
		{"longest action", schemas.Request{Action: "a." + strings.Repeat("b", 126), Resource: ok}, ""},
		{"longest type and id", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "M" + strings.Repeat("m", 63), ID: strings.Repeat("i", 256)}}, ""},
		{"empty action", schemas.Request{Resource: ok}, "action"},
		{"one word", schemas.Request{Action: "retrain", Resource: ok}, "action"},
		{"upper case", schemas.Request{Action: "Model.retrain", Resource: ok}, "action"},
		{"leading digit in a word", schemas.Request{Action: "model.1retrain", Resource: ok}, "action"},
		{"empty word", schemas.Request{Action: "model..retrain", Resource: ok}, "action"},
		{"NATS wildcard", schemas.Request{Action: "model.*", Resource: ok}, "action"},
		{"space", schemas.Request{Action: "model. retrain", Resource: ok}, "action"},
		{"action too long", schemas.Request{Action: "a." + strings.Repeat("b", 127), Resource: ok}, "action"},
		{"empty resource type", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{ID: "m"}}, "resource.type"},
		{"lower-case resource type", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "model", ID: "m"}}, "resource.type"},
		{"namespaced resource type", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Ml::Model", ID: "m"}}, "resource.type"},
		{"resource type too long", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "M" + strings.Repeat("m", 64), ID: "m"}}, "resource.type"},
		{"empty resource id", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model"}}, "resource.id"},
		{"resource id too long", schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: strings.Repeat("i", 257)}}, "resource.id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.req.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() accepted %+v", tc.req)
			}
			if !errors.Is(err, schemas.ErrInvalidEvent) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() = %v, want an ErrInvalidEvent naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestResourceAndPrincipalNames(t *testing.T) {
	t.Parallel()
	if got, want := (schemas.Resource{Type: "Model", ID: `fraud "v2"`}).String(), `Model::"fraud \"v2\""`; got != want {
		t.Errorf("Resource.String() = %s, want %s", got, want)
	}
	if got := schemas.PrincipalID("https://idp", "alice"); got != "https://idp#alice" {
		t.Errorf("PrincipalID = %s", got)
	}
	if !(schemas.Decision{Decision: schemas.Allow}).Allowed() || (schemas.Decision{Decision: schemas.Deny}).Allowed() || (schemas.Decision{}).Allowed() {
		t.Error("Allowed() must be true only for an allow")
	}
}
