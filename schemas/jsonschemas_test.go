package schemas_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

	"github.com/aigov/aigov/schemas"
)

// allSchemaFiles is every schema the package must ship.
var allSchemaFiles = []string{
	schemas.SchemaEvent, schemas.SchemaRequest, schemas.SchemaVerified,
	schemas.SchemaDecision, schemas.SchemaSession, schemas.SchemaRevocation,
	schemas.SchemaPolicy, schemas.SchemaEntity, schemas.SchemaApproval, schemas.SchemaApprovalRequest,
	schemas.SchemaPrivacy,
}

// allEventTypes is every CloudEvent type of the wire contract.
var allEventTypes = []string{
	schemas.TypeRequest, schemas.TypeVerified, schemas.TypeDecision,
	schemas.TypeSessionStarted, schemas.TypeSessionTokenSeen,
	schemas.TypeSessionExpired, schemas.TypeSessionRevoked,
	schemas.TypeLeaseStarted, schemas.TypeLeaseExpired,
	schemas.TypePolicyChanged, schemas.TypePolicyRejected, schemas.TypeEntityChanged, schemas.TypeApprovalUsed,
	schemas.TypeApprovalRequested, schemas.TypeApprovalGranted, schemas.TypeApprovalApproved,
	schemas.TypeApprovalRejected, schemas.TypeApprovalExpired,
	schemas.TypeSubjectErased,
}

// compileSchemas loads every embedded schema into one compiler, so relative
// $refs between files resolve, and compiles each. Formats are asserted, so
// a time that is not RFC 3339 fails.
func compileSchemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	fsys := schemas.JSONSchemas()
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s is not JSON: %v", name, err)
		}
		if err := c.AddResource(schemas.SchemaBaseURL+name, doc); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	out := make(map[string]*jsonschema.Schema, len(names))
	for _, name := range names {
		sch, err := c.Compile(schemas.SchemaBaseURL + name)
		if err != nil {
			t.Fatalf("compile %s: %v", name, err)
		}
		out[name] = sch
	}
	return out
}

// rawSchemas returns every embedded schema as a plain JSON tree.
func rawSchemas(t *testing.T) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	fsys := schemas.JSONSchemas()
	for _, name := range allSchemaFiles {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = doc
	}
	return out
}

func validateValue(t *testing.T, sch *jsonschema.Schema, v any) error {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return validateJSON(t, sch, b)
}

func validateJSON(t *testing.T, sch *jsonschema.Schema, b []byte) error {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("test document is not JSON: %v\n%s", err, b)
	}
	return sch.Validate(doc)
}

// violations lists every node of a validation error as "<instance
// location> <keyword>", e.g. "/action pattern" or " required".
func violations(err error) []string {
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return []string{"not a validation error: " + err.Error()}
	}
	var out []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		kw := "false"
		if _, ok := e.ErrorKind.(*kind.FalseSchema); !ok {
			path := e.ErrorKind.KeywordPath()
			kw = ""
			if len(path) > 0 {
				kw = path[len(path)-1]
			}
		}
		loc := ""
		if len(e.InstanceLocation) > 0 {
			loc = "/" + strings.Join(e.InstanceLocation, "/")
		}
		out = append(out, loc+" "+kw)
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(verr)
	return out
}

var (
	t0     = time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)
	issuer = "https://idp.example.com/realms/ml"
	token  = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func timePtr(t time.Time) *time.Time { return &t }

func fullRequest() schemas.Request {
	return schemas.Request{
		Action:   "model.retrain",
		Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"},
		Context: map[string]any{
			"environment":     "staging",
			"dataset":         "transactions-2026-10",
			"hyperparameters": map[string]any{"learning_rate": 0.01, "epochs": 20.0},
			"approvals":       []any{"risk-reviewers"},
		},
	}
}

func minRequest() schemas.Request {
	return schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m"}}
}

func fullPrincipal() schemas.Principal {
	return schemas.Principal{
		ID:        schemas.PrincipalID(issuer, "alice"),
		Type:      schemas.PrincipalUser,
		Issuer:    issuer,
		Subject:   "alice",
		Email:     "alice@example.com",
		Name:      "Alice",
		Groups:    []string{"data-scientists"},
		Scopes:    []string{"openid", "models:write"},
		AMR:       []string{"pwd", "mfa"},
		SessionID: "sid-1",
		AuthTime:  timePtr(at(-time.Hour)),
		IssuedAt:  at(-time.Minute),
		ExpiresAt: at(time.Hour),
		TokenID:   "jti-1",
	}
}

func minPrincipal() schemas.Principal {
	return schemas.Principal{
		ID:        schemas.PrincipalID(issuer, "svc-trainer"),
		Type:      schemas.PrincipalWorkload,
		Issuer:    issuer,
		Subject:   "svc-trainer",
		IssuedAt:  at(-time.Minute),
		ExpiresAt: at(time.Hour),
	}
}

func sessionKey() string {
	return schemas.SessionKey(schemas.Principal{Issuer: issuer, SessionID: "sid-1", Subject: "alice"})
}

func fullVerified() schemas.Verified {
	return schemas.Verified{
		RequestID:        "req-1",
		Source:           "ml-platform/trainer",
		Request:          fullRequest(),
		Principal:        fullPrincipal(),
		SessionKey:       sessionKey(),
		TokenFingerprint: schemas.Fingerprint(token),
		ReplyTo:          "_INBOX.platform.abc.req-1",
		ReceivedAt:       at(0),
		VerifiedAt:       at(80 * time.Microsecond),
	}
}

func minVerified() schemas.Verified {
	return schemas.Verified{
		RequestID:        "r",
		Source:           "p",
		Request:          minRequest(),
		Principal:        minPrincipal(),
		SessionKey:       schemas.SessionKey(schemas.Principal{Issuer: issuer, Subject: "svc-trainer"}),
		TokenFingerprint: schemas.Fingerprint("t"),
		ReceivedAt:       at(0),
		VerifiedAt:       at(time.Millisecond),
	}
}

func fullAllow() schemas.Decision {
	p := fullPrincipal()
	return schemas.Decision{
		RequestID:        "req-1",
		Action:           "model.retrain",
		Resource:         schemas.Resource{Type: "Model", ID: "fraud-detector"},
		Context:          fullRequest().Context,
		Principal:        &p,
		Decision:         schemas.Allow,
		Reason:           "permitted by data-scientists-retrain-staging",
		Stage:            schemas.StagePolicy,
		PolicyIDs:        []string{"data-scientists-retrain-staging"},
		PolicyVersion:    "sha256:0f3a",
		SessionKey:       sessionKey(),
		TokenFingerprint: schemas.Fingerprint(token),
		Timings: schemas.Timings{
			ReceivedAt: at(0), VerifiedAt: timePtr(at(80 * time.Microsecond)), DecidedAt: at(200 * time.Microsecond),
			AuthnMicros: 80, PolicyMicros: 120, TotalMicros: 200,
		},
	}
}

func minAllow() schemas.Decision {
	p := minPrincipal()
	return schemas.Decision{
		RequestID:     "r",
		Action:        "model.deploy",
		Resource:      schemas.Resource{Type: "Model", ID: "m"},
		Principal:     &p,
		Decision:      schemas.Allow,
		Stage:         schemas.StagePolicy,
		PolicyIDs:     []string{"p"},
		PolicyVersion: "v",
		Timings:       schemas.Timings{ReceivedAt: at(0), DecidedAt: at(time.Millisecond)},
	}
}

func fullPolicyDeny() schemas.Decision {
	d := fullAllow()
	d.Decision, d.Code, d.Reason = schemas.Deny, schemas.CodePolicyError, "policy forbid-prod-weights errored"
	d.PolicyIDs = []string{"forbid-prod-weights"}
	d.PolicyErrors = []string{"forbid-prod-weights: attribute stage not found"}
	return d
}

// An authn deny of a request that could not be read: no principal, an
// action taken from the subject, an empty resource.
func minMalformedDeny() schemas.Decision {
	return schemas.Decision{
		RequestID: "r",
		Action:    "Model.Retrain",
		Decision:  schemas.Deny,
		Code:      schemas.CodeMalformedRequest,
		Stage:     schemas.StageAuthn,
		Timings:   schemas.Timings{ReceivedAt: at(0), DecidedAt: at(time.Millisecond)},
	}
}

func fullSession() schemas.SessionEvent {
	return schemas.SessionEvent{
		SessionKey:       sessionKey(),
		Issuer:           issuer,
		Subject:          "alice",
		PrincipalID:      schemas.PrincipalID(issuer, "alice"),
		SessionID:        "sid-1",
		AuthTime:         timePtr(at(-time.Hour)),
		FirstSeen:        at(-30 * time.Minute),
		LastSeen:         at(0),
		Reason:           "offboarding",
		By:               schemas.PrincipalID(issuer, "rita"),
		RequestID:        "req-1",
		TokenFingerprint: schemas.Fingerprint(token),
	}
}

func minSession() schemas.SessionEvent {
	return schemas.SessionEvent{
		SessionKey:  sessionKey(),
		Issuer:      issuer,
		Subject:     "alice",
		PrincipalID: schemas.PrincipalID(issuer, "alice"),
		FirstSeen:   at(-time.Minute),
		LastSeen:    at(0),
	}
}

func expiredSession() schemas.SessionEvent {
	s := minSession()
	s.Reason = schemas.ReasonIdle
	return s
}

func fullRevocation() schemas.Revocation {
	return schemas.Revocation{SessionKey: sessionKey(), Code: schemas.CodeSessionRevoked, Reason: "kill switch by rita", At: at(0)}
}

func minRevocation() schemas.Revocation {
	return schemas.Revocation{SessionKey: sessionKey(), Code: schemas.CodeSessionExpired, At: at(0)}
}

func fullPolicyChange() schemas.PolicyChange {
	return schemas.PolicyChange{
		PolicyVersion: "sha256:2", PreviousVersion: "sha256:1", By: schemas.PrincipalID(issuer, "rita"), Email: "rita@example.com",
		RequestID: "req-9", PolicyIDs: []string{"a", "b"}, ShadowIDs: []string{"c"}, At: at(0),
	}
}

func rejectedPolicy() schemas.PolicyChange {
	p := fullPolicyChange()
	p.Errors = []string{"models.cedar:3: policy \"x\" does not validate"}
	return p
}

func fullApprovalUse() schemas.ApprovalUse {
	return schemas.ApprovalUse{
		RequestID: "req-1", Digest: "sha256:ab", Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m"},
		PrincipalID: schemas.PrincipalID(issuer, "erin"), Approvers: []string{schemas.PrincipalID(issuer, "rita")},
		Teams: []string{"risk-reviewers"}, PolicyIDs: []string{"p"}, PolicyVersion: "sha256:1", At: at(0),
	}
}

func requestUse() schemas.ApprovalUse {
	u := fullApprovalUse()
	u.ApprovalID, u.Uses, u.MaxUses = "apr-1", 1, 1
	return u
}

func fullApprovalRequest() schemas.ApprovalRequest {
	return schemas.ApprovalRequest{
		ID: "apr-1", Status: schemas.StatusPending, RequesterID: schemas.PrincipalID(issuer, "erin"), Digest: "sha256:ab",
		Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m"}, Context: map[string]any{"environment": "production"},
		PolicyVersion: "sha256:1", Requirements: []schemas.ApprovalRequirement{{Team: "risk-reviewers", Quorum: 2, PolicyID: "p"}},
		Grants:  []schemas.ApprovalGrant{{ReviewerID: "rita", Teams: []string{"risk-reviewers"}, RequestID: "req-2", At: at(1)}},
		MaxUses: 1, RequestID: "req-1", CreatedAt: at(0), UpdatedAt: at(1), ExpiresAt: at(2),
	}
}

func shadowAllow() schemas.Decision {
	d := fullAllow()
	d.Shadow = &schemas.ShadowOutcome{Decision: schemas.Deny, PolicyIDs: []string{"new-rule"}, Matched: []string{"new-rule"}}
	d.Approvals = []string{"risk-reviewers"}
	return d
}

func TestEverySchemaCompiles(t *testing.T) {
	t.Parallel()
	compiled := compileSchemas(t)
	if got := slices.Sorted(maps.Keys(compiled)); !slices.Equal(got, slices.Sorted(slices.Values(allSchemaFiles))) {
		t.Fatalf("embedded schemas = %v, want exactly %v", got, allSchemaFiles)
	}
	for name, doc := range rawSchemas(t) {
		if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema = %v, want draft 2020-12", name, doc["$schema"])
		}
		if doc["$id"] != schemas.SchemaBaseURL+name {
			t.Errorf("%s: $id = %v, want %s", name, doc["$id"], schemas.SchemaBaseURL+name)
		}
		if d, _ := doc["description"].(string); d == "" {
			t.Errorf("%s: no top-level description", name)
		}
	}
}

// Go values, fully populated and minimal, marshalled with encoding/json,
// validate against their schema alone and inside the envelope; and what
// the schema accepts decodes back into the same Go value.
func TestGoValuesValidate(t *testing.T) {
	t.Parallel()
	compiled := compileSchemas(t)
	cases := []struct {
		name      string
		eventType string // empty: not a CloudEvent (the revocation KV value)
		schema    string
		value     any
	}{
		{"request full", schemas.TypeRequest, schemas.SchemaRequest, fullRequest()},
		{"request minimal", schemas.TypeRequest, schemas.SchemaRequest, minRequest()},
		{"verified full", schemas.TypeVerified, schemas.SchemaVerified, fullVerified()},
		{"verified minimal", schemas.TypeVerified, schemas.SchemaVerified, minVerified()},
		{"decision allow full", schemas.TypeDecision, schemas.SchemaDecision, fullAllow()},
		{"decision allow minimal", schemas.TypeDecision, schemas.SchemaDecision, minAllow()},
		{"decision policy deny full", schemas.TypeDecision, schemas.SchemaDecision, fullPolicyDeny()},
		{"decision malformed deny minimal", schemas.TypeDecision, schemas.SchemaDecision, minMalformedDeny()},
		{"session started minimal", schemas.TypeSessionStarted, schemas.SchemaSession, minSession()},
		{"session token issued minimal", schemas.TypeSessionTokenSeen, schemas.SchemaSession, minSession()},
		{"session expired", schemas.TypeSessionExpired, schemas.SchemaSession, expiredSession()},
		{"session revoked full", schemas.TypeSessionRevoked, schemas.SchemaSession, fullSession()},
		{"revocation full", "", schemas.SchemaRevocation, fullRevocation()},
		{"revocation minimal", "", schemas.SchemaRevocation, minRevocation()},
		{"policy changed full", schemas.TypePolicyChanged, schemas.SchemaPolicy, fullPolicyChange()},
		{"policy seeded minimal", schemas.TypePolicyChanged, schemas.SchemaPolicy, schemas.PolicyChange{PolicyVersion: "sha256:1", By: "aigov/policy", At: at(0)}},
		{"policy rejected", schemas.TypePolicyRejected, schemas.SchemaPolicy, rejectedPolicy()},
		{"subject erased", schemas.TypeSubjectErased, schemas.SchemaPrivacy, schemas.SubjectErasure{SubjectKeyID: strings.Repeat("ab", 32), RequestID: "r1", By: "iss#admin", ApprovalID: "apr-1", Approvals: []string{"risk-reviewers"}, PolicyIDs: []string{"p"}, PolicyVersion: "sha256:1", At: at(0)}},
		{"entity put", schemas.TypeEntityChanged, schemas.SchemaEntity, schemas.EntityChange{Op: "put", Entity: schemas.Resource{Type: "Model", ID: "m"}, Revision: 7, ValueSHA256: "ab", At: at(0)}},
		{"entity delete", schemas.TypeEntityChanged, schemas.SchemaEntity, schemas.EntityChange{Op: "delete", Entity: schemas.Resource{Type: "Model", ID: "m"}, Revision: 8, At: at(0)}},
		{"approval used", schemas.TypeApprovalUsed, schemas.SchemaApproval, fullApprovalUse()},
		{"approval request used", schemas.TypeApprovalUsed, schemas.SchemaApproval, requestUse()},
		{"approval requested", schemas.TypeApprovalRequested, schemas.SchemaApprovalRequest, fullApprovalRequest().EventOf(schemas.ApprovalRequested, "req-1", "", nil, at(0))},
		{"approval granted", schemas.TypeApprovalGranted, schemas.SchemaApprovalRequest, fullApprovalRequest().EventOf(schemas.ApprovalGranted, "req-2", "rita", []string{"risk-reviewers"}, at(1))},
		{"decision with shadow and approvals", schemas.TypeDecision, schemas.SchemaDecision, shadowAllow()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := validateValue(t, compiled[tc.schema], tc.value); err != nil {
				t.Fatalf("data does not validate against %s: %v", tc.schema, err)
			}
			if tc.eventType == "" {
				return
			}
			if got, err := schemas.SchemaFor(tc.eventType); err != nil || got != tc.schema {
				t.Fatalf("SchemaFor(%s) = %q, %v; want %s", tc.eventType, got, err, tc.schema)
			}
			ev, err := schemas.NewEvent(schemas.DerivedID("req-1", tc.eventType), "aigov/test", tc.eventType, t0, tc.value)
			if err != nil {
				t.Fatal(err)
			}
			body, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateJSON(t, compiled[schemas.SchemaEvent], body); err != nil {
				t.Fatalf("event does not validate against event.json: %v\n%s", err, body)
			}
			parsed, err := schemas.ParseEvent(body)
			if err != nil {
				t.Fatal(err)
			}
			back := reflect.New(reflect.TypeOf(tc.value))
			if err := parsed.DecodeData(back.Interface()); err != nil {
				t.Fatalf("DecodeData: %v", err)
			}
			if !reflect.DeepEqual(back.Elem().Interface(), tc.value) {
				t.Fatalf("round trip changed the value:\n got %#v\nwant %#v", back.Elem().Interface(), tc.value)
			}
		})
	}
}

func envelope(t *testing.T, typ string, data string) string {
	t.Helper()
	ev := schemas.Event{
		SpecVersion: schemas.SpecVersion, ID: "e1", Source: "aigov/test", Type: typ, Time: t0,
		DataContentType: "application/json", Data: json.RawMessage(data),
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// edit returns v marshalled to a JSON object with keys set (nil deletes).
func edit(t *testing.T, v any, set map[string]any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// Bad documents are rejected, for the reason the case names.
func TestBadDocumentsRejected(t *testing.T) {
	t.Parallel()
	compiled := compileSchemas(t)
	validSession := edit(t, minSession(), nil)
	cases := []struct {
		name   string
		schema string
		doc    string
		want   string // "<instance location> <keyword>" among the violations
	}{
		{"request missing action", schemas.SchemaRequest, `{"resource":{"type":"Model","id":"m"}}`, " required"},
		{"request action upper case", schemas.SchemaRequest, `{"action":"Model.Retrain","resource":{"type":"Model","id":"m"}}`, "/action pattern"},
		{"request action one word", schemas.SchemaRequest, `{"action":"retrain","resource":{"type":"Model","id":"m"}}`, "/action pattern"},
		{"request action too long", schemas.SchemaRequest, `{"action":"a.` + strings.Repeat("b", 127) + `","resource":{"type":"Model","id":"m"}}`, "/action maxLength"},
		{"request extra field", schemas.SchemaRequest, `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"actor":"alice"}`, " additionalProperties"},
		{"request resource attribute smuggled", schemas.SchemaRequest, `{"action":"model.retrain","resource":{"type":"Model","id":"m","stage":"production"}}`, "/resource additionalProperties"},
		{"request resource type lower case", schemas.SchemaRequest, `{"action":"model.retrain","resource":{"type":"model","id":"m"}}`, "/resource/type pattern"},
		{"request resource id empty", schemas.SchemaRequest, `{"action":"model.retrain","resource":{"type":"Model","id":""}}`, "/resource/id minLength"},
		{"request context not object", schemas.SchemaRequest, `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"context":"prod"}`, "/context type"},
		{"verified carries a raw token", schemas.SchemaVerified, edit(t, fullVerified(), map[string]any{"token": token}), " additionalProperties"},
		{"verified fingerprint not hex", schemas.SchemaVerified, edit(t, fullVerified(), map[string]any{"token_fingerprint": token}), "/token_fingerprint pattern"},
		{"verified principal type unknown", schemas.SchemaVerified, edit(t, fullVerified(), map[string]any{"principal": map[string]any{"id": "i#s", "type": "Robot", "issuer": "i", "subject": "s", "iat": t0, "exp": t0}}), "/principal/type enum"},
		{"verified time not RFC 3339", schemas.SchemaVerified, edit(t, fullVerified(), map[string]any{"received_at": "25/11/2026"}), "/received_at format"},
		{"decision deny without code", schemas.SchemaDecision, edit(t, fullPolicyDeny(), map[string]any{"code": nil}), " required"},
		{"decision unknown code", schemas.SchemaDecision, edit(t, fullPolicyDeny(), map[string]any{"code": "token_stolen"}), "/code oneOf"},
		{"decision neither allow nor deny", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"decision": "maybe"}), "/decision enum"},
		{"decision allow with code", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"code": "policy_denied"}), "/code false"},
		{"decision allow without principal", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"principal": nil}), " required"},
		{"decision allow without policy ids", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"policy_ids": []string{}}), "/policy_ids minItems"},
		{"decision allow from authn", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"stage": "authn"}), "/stage const"},
		{"decision allow of malformed action", schemas.SchemaDecision, edit(t, fullAllow(), map[string]any{"action": "Model.Retrain"}), "/action pattern"},
		{"decision unknown stage", schemas.SchemaDecision, edit(t, fullPolicyDeny(), map[string]any{"stage": "audit"}), "/stage enum"},
		{"decision without timings", schemas.SchemaDecision, edit(t, fullPolicyDeny(), map[string]any{"timings": nil}), " required"},
		{"decision fractional micros", schemas.SchemaDecision, edit(t, fullPolicyDeny(), map[string]any{"timings": map[string]any{"received_at": t0, "decided_at": t0, "authn_us": 1.5, "policy_us": 0, "total_us": 2}}), "/timings/authn_us type"},
		{"session missing session key", schemas.SchemaSession, edit(t, minSession(), map[string]any{"session_key": nil}), " required"},
		{"session extra field", schemas.SchemaSession, edit(t, minSession(), map[string]any{"ttl": 60}), " additionalProperties"},
		{"revocation with a policy code", schemas.SchemaRevocation, edit(t, fullRevocation(), map[string]any{"code": "policy_denied"}), "/code enum"},
		{"revocation unknown code", schemas.SchemaRevocation, edit(t, fullRevocation(), map[string]any{"code": "logout"}), "/code enum"},
		{"revocation missing at", schemas.SchemaRevocation, edit(t, fullRevocation(), map[string]any{"at": nil}), " required"},
		{"event wrong specversion", schemas.SchemaEvent, strings.Replace(envelope(t, schemas.TypeSessionStarted, validSession), `"1.0"`, `"0.3"`, 1), "/specversion const"},
		{"event id too long", schemas.SchemaEvent, strings.Replace(envelope(t, schemas.TypeSessionStarted, validSession), `"e1"`, `"`+strings.Repeat("x", 129)+`"`, 1), "/id maxLength"},
		{"event missing data", schemas.SchemaEvent, strings.Replace(envelope(t, schemas.TypeRequest, `{}`), `,"data":{}`, ``, 1), " required"},
		{"event unknown type", schemas.SchemaEvent, envelope(t, "dev.aigov.request.v2", `{}`), "/type enum"},
		{"event data_base64", schemas.SchemaEvent, strings.Replace(envelope(t, schemas.TypeSessionStarted, validSession), `{`, `{"data_base64":"e30=",`, 1), " propertyNames"},
		{"event request with bad action", schemas.SchemaEvent, envelope(t, schemas.TypeRequest, `{"action":"retrain","resource":{"type":"Model","id":"m"}}`), "/data/action pattern"},
		{"event decision deny without code", schemas.SchemaEvent, envelope(t, schemas.TypeDecision, edit(t, fullPolicyDeny(), map[string]any{"code": nil})), "/data required"},
		{"event verified with request data", schemas.SchemaEvent, envelope(t, schemas.TypeVerified, edit(t, fullRequest(), nil)), "/data required"},
		{"event session expired without reason", schemas.SchemaEvent, envelope(t, schemas.TypeSessionExpired, validSession), "/data required"},
		{"event session expired odd reason", schemas.SchemaEvent, envelope(t, schemas.TypeSessionExpired, edit(t, minSession(), map[string]any{"reason": "bored"})), "/data/reason enum"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := validateJSON(t, compiled[tc.schema], []byte(tc.doc))
			if err == nil {
				t.Fatalf("%s accepted:\n%s", tc.schema, tc.doc)
			}
			if got := violations(err); !slices.Contains(got, tc.want) {
				t.Fatalf("want violation %q, got %q\n%v", tc.want, got, err)
			}
		})
	}
}

// The schema and the Go decoder agree on which request data are valid:
// authn denies exactly what the schema rejects.
func TestRequestSchemaAgreesWithGo(t *testing.T) {
	t.Parallel()
	sch := compileSchemas(t)[schemas.SchemaRequest]
	cases := []struct {
		name  string
		doc   string
		valid bool
	}{
		{"minimal", `{"action":"model.deploy","resource":{"type":"Model","id":"m"}}`, true},
		{"three words and digits", `{"action":"agent.tool_call.v2","resource":{"type":"Tool_2","id":"search"}}`, true},
		{"context", `{"action":"dataset.promote","resource":{"type":"Dataset","id":"d"},"context":{"environment":"production","n":[1,2]}}`, true},
		{"longest action", `{"action":"a.` + strings.Repeat("b", 126) + `","resource":{"type":"Model","id":"m"}}`, true},
		{"longest id", `{"action":"model.deploy","resource":{"type":"Model","id":"` + strings.Repeat("i", 256) + `"}}`, true},
		{"action too long", `{"action":"a.` + strings.Repeat("b", 127) + `","resource":{"type":"Model","id":"m"}}`, false},
		{"id too long", `{"action":"model.deploy","resource":{"type":"Model","id":"` + strings.Repeat("i", 257) + `"}}`, false},
		{"type too long", `{"action":"model.deploy","resource":{"type":"M` + strings.Repeat("m", 64) + `","id":"m"}}`, false},
		{"missing action", `{"resource":{"type":"Model","id":"m"}}`, false},
		{"missing resource", `{"action":"model.deploy"}`, false},
		{"action starts with digit", `{"action":"1model.deploy","resource":{"type":"Model","id":"m"}}`, false},
		{"action trailing dot", `{"action":"model.","resource":{"type":"Model","id":"m"}}`, false},
		{"action with wildcard", `{"action":"model.>","resource":{"type":"Model","id":"m"}}`, false},
		{"action not a string", `{"action":5,"resource":{"type":"Model","id":"m"}}`, false},
		{"resource type with colons", `{"action":"model.deploy","resource":{"type":"Ns::Model","id":"m"}}`, false},
		{"unknown top-level field", `{"action":"model.deploy","resource":{"type":"Model","id":"m"},"principal":"admin"}`, false},
		{"unknown resource field", `{"action":"model.deploy","resource":{"type":"Model","id":"m","owner":"me"}}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			schemaErr := validateJSON(t, sch, []byte(tc.doc))
			var req schemas.Request
			goErr := schemas.Event{Type: schemas.TypeRequest, Data: json.RawMessage(tc.doc)}.DecodeData(&req)
			if goErr == nil {
				goErr = req.Validate()
			}
			if (schemaErr == nil) != tc.valid {
				t.Errorf("schema: valid=%v, want %v (%v)", schemaErr == nil, tc.valid, schemaErr)
			}
			if (goErr == nil) != tc.valid {
				t.Errorf("Go: valid=%v, want %v (%v)", goErr == nil, tc.valid, goErr)
			}
			if goErr != nil && !errors.Is(goErr, schemas.ErrInvalidEvent) {
				t.Errorf("Go error %v does not wrap ErrInvalidEvent", goErr)
			}
		})
	}
}

// decision.json's code set, with its descriptions, equals schemas.Codes.
func TestDecisionCodesMatchGo(t *testing.T) {
	t.Parallel()
	raw := rawSchemas(t)
	code := raw[schemas.SchemaDecision]["$defs"].(map[string]any)["code"].(map[string]any)
	got := map[schemas.Code]string{}
	for _, alt := range code["oneOf"].([]any) {
		a := alt.(map[string]any)
		c := schemas.Code(a["const"].(string))
		if _, dup := got[c]; dup {
			t.Errorf("code %s listed twice", c)
		}
		got[c], _ = a["description"].(string)
	}
	if !maps.Equal(got, schemas.Codes) {
		t.Errorf("decision.json codes differ from schemas.Codes:\n got %v\nwant %v", got, schemas.Codes)
	}
	desc, _ := code["description"].(string)
	for c := range schemas.Codes {
		if !strings.Contains(desc, string(c)) {
			t.Errorf("code description does not list %s", c)
		}
	}
	// The revocation codes are a subset of the deny codes.
	rev := raw[schemas.SchemaRevocation]["properties"].(map[string]any)["code"].(map[string]any)
	for _, c := range rev["enum"].([]any) {
		if _, ok := schemas.Codes[schemas.Code(c.(string))]; !ok {
			t.Errorf("revocation.json code %v is not in schemas.Codes", c)
		}
	}
}

// lookup follows a JSON pointer such as #/$defs/principal in file.
func lookup(t *testing.T, raw map[string]map[string]any, file, pointer string) map[string]any {
	t.Helper()
	node, ok := raw[file]
	if !ok {
		t.Fatalf("no schema file %s", file)
	}
	for _, tok := range strings.Split(strings.TrimPrefix(pointer, "#"), "/") {
		if tok == "" {
			continue
		}
		next, ok := node[tok].(map[string]any)
		if !ok {
			t.Fatalf("%s%s: no %q", file, pointer, tok)
		}
		node = next
	}
	return node
}

// resolve follows a $ref (relative to file) until a schema without one.
func resolve(t *testing.T, raw map[string]map[string]any, file string, node map[string]any) map[string]any {
	t.Helper()
	for range 8 {
		ref, ok := node["$ref"].(string)
		if !ok {
			return node
		}
		target, pointer, _ := strings.Cut(ref, "#")
		if target != "" {
			file = target
		}
		node = lookup(t, raw, file, "#"+pointer)
	}
	t.Fatalf("%s: $ref chain too long", file)
	return nil
}

var timeType = reflect.TypeOf(time.Time{})

// Every exported field of the Go structs is a property of its schema, and
// nothing else is; required properties are exactly the fields encoding/json
// always writes; each property is documented and typed as Go encodes it.
func TestSchemasMatchGoStructs(t *testing.T) {
	t.Parallel()
	raw := rawSchemas(t)
	cases := []struct {
		goType  reflect.Type
		file    string
		pointer string
		closed  bool
	}{
		{reflect.TypeOf(schemas.Event{}), schemas.SchemaEvent, "#", false},
		{reflect.TypeOf(schemas.Request{}), schemas.SchemaRequest, "#", true},
		{reflect.TypeOf(schemas.Resource{}), schemas.SchemaRequest, "#/$defs/resource", true},
		{reflect.TypeOf(schemas.Verified{}), schemas.SchemaVerified, "#", true},
		{reflect.TypeOf(schemas.Principal{}), schemas.SchemaVerified, "#/$defs/principal", true},
		{reflect.TypeOf(schemas.Decision{}), schemas.SchemaDecision, "#", true},
		{reflect.TypeOf(schemas.Resource{}), schemas.SchemaDecision, "#/$defs/resource_as_received", true},
		{reflect.TypeOf(schemas.Timings{}), schemas.SchemaDecision, "#/$defs/timings", true},
		{reflect.TypeOf(schemas.SessionEvent{}), schemas.SchemaSession, "#", true},
		{reflect.TypeOf(schemas.Revocation{}), schemas.SchemaRevocation, "#", true},
		{reflect.TypeOf(schemas.PolicyChange{}), schemas.SchemaPolicy, "#", true},
		{reflect.TypeOf(schemas.EntityChange{}), schemas.SchemaEntity, "#", true},
		{reflect.TypeOf(schemas.SubjectErasure{}), schemas.SchemaPrivacy, "#", true},
		{reflect.TypeOf(schemas.ApprovalUse{}), schemas.SchemaApproval, "#", true},
		{reflect.TypeOf(schemas.Approval{}), schemas.SchemaApproval, "#/$defs/approval", true},
		{reflect.TypeOf(schemas.ApprovalEvent{}), schemas.SchemaApprovalRequest, "#", true},
		{reflect.TypeOf(schemas.ApprovalRequest{}), schemas.SchemaApprovalRequest, "#/$defs/request", true},
		{reflect.TypeOf(schemas.ApprovalRequirement{}), schemas.SchemaApprovalRequest, "#/$defs/requirement", true},
		{reflect.TypeOf(schemas.ApprovalGrant{}), schemas.SchemaApprovalRequest, "#/$defs/grant", true},
		{reflect.TypeOf(schemas.ShadowOutcome{}), schemas.SchemaDecision, "#/$defs/shadow_outcome", true},
	}
	for _, tc := range cases {
		t.Run(tc.goType.Name()+" in "+tc.file+tc.pointer, func(t *testing.T) {
			t.Parallel()
			node := lookup(t, raw, tc.file, tc.pointer)
			props, _ := node["properties"].(map[string]any)
			var required []string
			for _, r := range node["required"].([]any) {
				required = append(required, r.(string))
			}
			if closed := node["additionalProperties"] == false; closed != tc.closed {
				t.Errorf("additionalProperties false = %v, want %v", closed, tc.closed)
			}
			var names, always []string
			for i := range tc.goType.NumField() {
				f := tc.goType.Field(i)
				if !f.IsExported() {
					continue
				}
				tag, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
				if tag == "-" {
					continue
				}
				if tag == "" {
					t.Fatalf("field %s has no json name", f.Name)
				}
				names = append(names, tag)
				if !strings.Contains(opts, "omitempty") {
					always = append(always, tag)
				}
				prop, ok := props[tag].(map[string]any)
				if !ok {
					t.Errorf("field %s (%q) is not a property of the schema", f.Name, tag)
					continue
				}
				if d, _ := prop["description"].(string); d == "" {
					t.Errorf("property %q has no description", tag)
				}
				checkKind(t, tag, f.Type, resolve(t, raw, tc.file, prop))
			}
			sort.Strings(required)
			sort.Strings(always)
			if !slices.Equal(required, always) {
				t.Errorf("required = %v, want the fields without omitempty %v", required, always)
			}
			for p := range props {
				if !slices.Contains(names, p) {
					t.Errorf("schema property %q has no Go field", p)
				}
			}
		})
	}
}

// checkKind checks that the schema types a property as encoding/json
// writes the Go type.
func checkKind(t *testing.T, name string, typ reflect.Type, sch map[string]any) {
	t.Helper()
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := ""
	switch {
	case typ == timeType:
		if sch["format"] != "date-time" {
			t.Errorf("property %q: format = %v, want date-time", name, sch["format"])
		}
		want = "string"
	case typ == reflect.TypeOf(json.RawMessage{}), typ.Kind() == reflect.Map, typ.Kind() == reflect.Struct:
		want = "object"
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Int64, typ.Kind() == reflect.Int:
		want = "integer"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() == reflect.Slice:
		want = "array"
	default:
		t.Fatalf("property %q: no JSON kind for Go %s", name, typ)
	}
	got, hasType := sch["type"]
	if !hasType {
		// A const or enum of strings types the property by itself.
		if _, isConst := sch["const"].(string); isConst && want == "string" {
			return
		}
	}
	if got != want {
		t.Errorf("property %q: type = %v, want %s (Go %s)", name, got, want, typ)
	}
}

// Every property and every definition, in every file, says what it is.
func TestEverySchemaNodeDocumented(t *testing.T) {
	t.Parallel()
	for name, doc := range rawSchemas(t) {
		var walk func(path string, node map[string]any)
		walk = func(path string, node map[string]any) {
			for _, group := range []string{"properties", "$defs"} {
				members, _ := node[group].(map[string]any)
				for k, v := range members {
					m, _ := v.(map[string]any)
					if m == nil {
						continue // a boolean schema such as "code": false
					}
					if d, _ := m["description"].(string); d == "" && !strings.Contains(path, "allOf") {
						t.Errorf("%s %s/%s/%s has no description", name, path, group, k)
					}
					walk(path+"/"+group+"/"+k, m)
				}
			}
			for i, sub := range asList(node["allOf"]) {
				for _, kw := range []string{"if", "then", "else"} {
					if m, ok := sub.(map[string]any)[kw].(map[string]any); ok {
						walk(path+"/allOf/"+strconv.Itoa(i)+"/"+kw, m)
					}
				}
			}
		}
		walk("#", doc)
	}
}

func asList(v any) []any { l, _ := v.([]any); return l }

// event.json routes each type's data to the same schema as SchemaFor, and
// lists exactly the wire contract's types.
func TestEventSchemaRoutesLikeSchemaFor(t *testing.T) {
	t.Parallel()
	ev := rawSchemas(t)[schemas.SchemaEvent]
	var enum []string
	for _, v := range ev["properties"].(map[string]any)["type"].(map[string]any)["enum"].([]any) {
		enum = append(enum, v.(string))
	}
	if !slices.Equal(slices.Sorted(slices.Values(enum)), slices.Sorted(slices.Values(allEventTypes))) {
		t.Errorf("event.json types = %v, want %v", enum, allEventTypes)
	}
	routes := map[string][]string{}
	for _, sub := range asList(ev["allOf"]) {
		s := sub.(map[string]any)
		typ := s["if"].(map[string]any)["properties"].(map[string]any)["type"].(map[string]any)
		data := s["then"].(map[string]any)["properties"].(map[string]any)["data"].(map[string]any)
		ref, ok := data["$ref"].(string)
		if !ok {
			continue // a refinement, not a route
		}
		types := asList(typ["enum"])
		if c, ok := typ["const"]; ok {
			types = append(types, c)
		}
		for _, ty := range types {
			routes[ty.(string)] = append(routes[ty.(string)], ref)
		}
	}
	for _, typ := range allEventTypes {
		want, err := schemas.SchemaFor(typ)
		if err != nil {
			t.Fatalf("SchemaFor(%s): %v", typ, err)
		}
		if _, err := fs.Stat(schemas.JSONSchemas(), want); err != nil {
			t.Errorf("SchemaFor(%s) = %s, not in JSONSchemas(): %v", typ, want, err)
		}
		if got := routes[typ]; !slices.Equal(got, []string{want}) {
			t.Errorf("event.json routes %s data to %v, SchemaFor says %s", typ, got, want)
		}
	}
}

func TestSchemaForUnknownType(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"", "dev.aigov.request.v2", "com.example.other", "dev.aigov.revocation.v1"} {
		got, err := schemas.SchemaFor(typ)
		if err == nil {
			t.Errorf("SchemaFor(%q) = %q, want an error", typ, got)
			continue
		}
		if !errors.Is(err, schemas.ErrUnknownEventType) || !errors.Is(err, schemas.ErrInvalidEvent) {
			t.Errorf("SchemaFor(%q) error %v should wrap ErrUnknownEventType and ErrInvalidEvent", typ, err)
		}
	}
}
