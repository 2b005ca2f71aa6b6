// Package demo plays the scenarios of the seed through a running stack:
// identities from the dev IdP, requests through NATS, decisions back, rows in
// ClickHouse. `make run` prints it; the end-to-end test asserts it.
package demo

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// TokenKind says what token a scenario presents.
type TokenKind int

// Token kinds.
const (
	TokenGood TokenKind = iota
	TokenExpired
	TokenForged
	TokenNone
	// TokenAfterSessionEnd reuses the previous scenario's token once the
	// reaper has ended its session.
	TokenAfterSessionEnd
)

// Scenario is one request and the decision it must get.
type Scenario struct {
	Name     string
	Persona  string
	Token    TokenKind
	Request  schemas.Request
	Decision string
	Code     schemas.Code
}

// Scenarios are the seed's cases, in the order they are played.
func Scenarios() []Scenario {
	staging := map[string]any{"environment": "staging"}
	production := map[string]any{"environment": "production"}
	fraud := schemas.Resource{Type: "Model", ID: "fraud-detector"}
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	training := schemas.Resource{Type: "Dataset", ID: "transactions-training"}
	return []Scenario{
		{Name: "data scientist retrains a model in staging", Persona: "alice",
			Request:  schemas.Request{Action: "model.retrain", Resource: fraud, Context: map[string]any{"environment": "staging", "hyperparameters": map[string]any{"learning_rate": "0.01", "epochs": 20}}},
			Decision: schemas.Allow},
		{Name: "dataset change by a non-contributor", Persona: "alice",
			Request:  schemas.Request{Action: "dataset.update", Resource: training, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "dataset change by a contributor", Persona: "carol",
			Request:  schemas.Request{Action: "dataset.update", Resource: training, Context: staging},
			Decision: schemas.Allow},
		{Name: "production deploy without approval", Persona: "erin",
			Request:  schemas.Request{Action: "model.deploy", Resource: churn, Context: production},
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "weights overwrite by a non-owner", Persona: "alice",
			Request:  schemas.Request{Action: "model.overwrite_weights", Resource: fraud, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "expired token", Persona: "alice", Token: TokenExpired,
			Request:  schemas.Request{Action: "model.retrain", Resource: fraud, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodeTokenExpired},
		{Name: "forged signature", Persona: "erin", Token: TokenForged,
			Request:  schemas.Request{Action: "model.deploy", Resource: fraud, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodeBadSignature},
		{Name: "no token at all", Persona: "oscar", Token: TokenNone,
			Request:  schemas.Request{Action: "model.retrain", Resource: fraud, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodeMissingToken},
		{Name: "long job: request inside its session", Persona: "alice",
			Request:  schemas.Request{Action: "model.retrain", Resource: fraud, Context: staging},
			Decision: schemas.Allow},
		{Name: "long job: same session past its max age", Persona: "alice", Token: TokenAfterSessionEnd,
			Request:  schemas.Request{Action: "model.retrain", Resource: fraud, Context: staging},
			Decision: schemas.Deny, Code: schemas.CodeSessionExpired},
	}
}

// Result is what one scenario got.
type Result struct {
	Scenario Scenario
	// Token is kept for tests that check it never reached a table.
	Token    string
	Decision schemas.Decision
	Latency  time.Duration
	Err      error
}

// OK reports whether the scenario got the decision and code it must.
func (r Result) OK() bool {
	return r.Err == nil && r.Decision.Decision == r.Scenario.Decision && r.Decision.Code == r.Scenario.Code
}

// Play runs every scenario in order. progress receives a line per step.
func Play(ctx context.Context, st *stack.Stack, sessionMaxAge time.Duration, progress io.Writer) ([]Result, error) {
	var results []Result
	var last string
	for _, sc := range Scenarios() {
		token, err := tokenFor(ctx, st, sc, last, sessionMaxAge, progress)
		if err != nil {
			return results, fmt.Errorf("scenario %q: %w", sc.Name, err)
		}
		last = token
		start := time.Now()
		d, err := st.Client.Authorize(ctx, client.Call{Token: token, Request: sc.Request})
		results = append(results, Result{Scenario: sc, Token: token, Decision: d, Latency: time.Since(start), Err: err})
	}
	return results, nil
}

func tokenFor(ctx context.Context, st *stack.Stack, sc Scenario, previous string, maxAge time.Duration, progress io.Writer) (string, error) {
	switch sc.Token {
	case TokenNone:
		return "", nil
	case TokenExpired:
		return st.IdP.Token(ctx, sc.Persona, idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
	case TokenForged:
		good, err := st.IdP.Token(ctx, sc.Persona)
		if err != nil {
			return "", err
		}
		return idp.Forge(good)
	case TokenAfterSessionEnd:
		fmt.Fprintf(progress, "waiting for the reaper to end the session (max age %s)...\n", maxAge)
		if err := WaitSessionEnded(ctx, st, previous, maxAge+30*time.Second); err != nil {
			return "", err
		}
		return previous, nil
	default:
		return st.IdP.Token(ctx, sc.Persona)
	}
}

// WaitSessionEnded waits until the reaper has revoked the session of a
// token: the revocation authn checks is then in place.
func WaitSessionEnded(ctx context.Context, st *stack.Stack, token string, timeout time.Duration) error {
	key, err := SessionKeyOf(token)
	if err != nil {
		return err
	}
	kv, err := st.AdminJS.KeyValue(ctx, topology.New("").BucketRevocations())
	if err != nil {
		return fmt.Errorf("open revocations: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := kv.Get(ctx, key); err == nil {
			return nil
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("read revocation: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("session of the token was not ended within %s", timeout)
}

// SessionKeyOf computes the session key of one of the dev IdP's tokens from
// its (unverified: we minted it) claims, the same way authn does.
func SessionKeyOf(token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("decode token payload: %w", err)
	}
	var c struct {
		Iss      string `json:"iss"`
		Sub      string `json:"sub"`
		Sid      string `json:"sid"`
		AuthTime int64  `json:"auth_time"`
		IAT      int64  `json:"iat"`
		Exp      int64  `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return "", fmt.Errorf("decode token claims: %w", err)
	}
	p := schemas.Principal{Issuer: c.Iss, SessionID: c.Sid, Subject: c.Sub, ExpiresAt: time.Unix(c.Exp, 0)}
	if c.AuthTime != 0 {
		t := time.Unix(c.AuthTime, 0)
		p.AuthTime = &t
	}
	if c.IAT != 0 {
		p.IssuedAt = time.Unix(c.IAT, 0)
	}
	return schemas.SessionKey(p), nil
}

// PrintDecisions writes the decision table.
func PrintDecisions(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tWHO\tACTION\tRESOURCE\tDECISION\tCODE\tPOLICY\tLATENCY\tOK")
	for _, r := range results {
		who := r.Scenario.Persona
		d := r.Decision
		decision, code := d.Decision, string(d.Code)
		if r.Err != nil {
			decision, code = "error", r.Err.Error()
		}
		ok := "yes"
		if !r.OK() {
			ok = fmt.Sprintf("NO (want %s %s)", r.Scenario.Decision, r.Scenario.Code)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario.Name, who, r.Scenario.Request.Action,
			r.Scenario.Request.Resource, decision, dash(code), dash(strings.Join(d.PolicyIDs, ",")),
			r.Latency.Round(100*time.Microsecond), ok)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
