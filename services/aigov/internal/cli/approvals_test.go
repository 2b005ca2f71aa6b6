package cli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/natsdev"
)

// approvals list and show read the approval requests bucket as the operator
// user and print tables; flags go anywhere, as everywhere in the CLI.
func TestApprovalsListAndShow(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	_, js := srv.ConnectT(t, natsdev.AdminUser)
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, topology.New("").BucketApprovalRequests())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	base := schemas.ApprovalRequest{
		Status: schemas.StatusPending, RequesterID: "https://idp.example#riley", Digest: "sha256:ab", Action: "model.deploy",
		Resource: schemas.Resource{Type: "Model", ID: "churn-predictor"}, Context: map[string]any{"environment": "production"},
		PolicyVersion: "sha256:aa", Requirements: []schemas.ApprovalRequirement{{Team: "risk-reviewers", Quorum: 2, PolicyID: "p"}},
		MaxUses: 1, RequestID: "deploy-1", UpdatedAt: now,
	}
	pending, used, lapsed := base, base, base
	pending.ID, pending.CreatedAt, pending.ExpiresAt = "apr-pending", now, now.Add(time.Hour)
	pending.Grants = []schemas.ApprovalGrant{{ReviewerID: "https://idp.example#rita", Teams: []string{"risk-reviewers"}, RequestID: "grant-1", At: now}}
	used.ID, used.Status, used.Uses, used.UsedBy, used.CreatedAt, used.ExpiresAt = "apr-used", schemas.StatusUsed, 1, []string{"deploy-2"}, now.Add(-time.Minute), now.Add(time.Hour)
	lapsed.ID, lapsed.CreatedAt, lapsed.ExpiresAt = "apr-lapsed", now.Add(-2*time.Hour), now.Add(-time.Hour)
	for _, a := range []schemas.ApprovalRequest{pending, used, lapsed} {
		b, _ := json.Marshal(a)
		if _, err := kv.Put(ctx, a.ID, b); err != nil {
			t.Fatal(err)
		}
	}
	bus := []string{"--nats", srv.URL(), "--tls-ca", srv.CAFile(), "--password", srv.Password(schemas.RoleOperator)}

	code, out, errOut := run(t, append([]string{"approvals", "list"}, bus...)...)
	if code != cli.ExitAllow || !strings.Contains(out, "ID") || !strings.Contains(out, "APPROVALS") ||
		!strings.Contains(strings.Join(strings.Fields(out), " "), "apr-pending pending") || !strings.Contains(out, "risk-reviewers 1/2") || strings.Contains(out, "apr-used") || strings.Contains(out, "apr-lapsed") {
		t.Fatalf("list (live): exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, append([]string{"approvals", "list", "--status", "all"}, bus...)...)
	if code != cli.ExitAllow || strings.Index(out, "apr-pending") > strings.Index(out, "apr-used") || !strings.Contains(strings.Join(strings.Fields(out), " "), "apr-lapsed expired") {
		t.Fatalf("list --status all (newest first, a lapsed one shown expired): exit %d\n%s", code, out)
	}
	code, out, errOut = run(t, append([]string{"approvals", "show", "apr-pending"}, bus...)...)
	for _, want := range []string{"requested by", "https://idp.example#riley", `{"environment":"production"}`, "GRANTED BY", "https://idp.example#rita", "REQUIRED", "0 of 1"} {
		if code != cli.ExitAllow || !strings.Contains(out, want) {
			t.Errorf("show: exit %d, no %q in\n%s%s", code, want, out, errOut)
		}
	}
	code, out, _ = run(t, append(append([]string{"approvals", "show"}, bus...), "apr-used", "--json")...)
	var got schemas.ApprovalRequest
	if code != cli.ExitAllow || json.Unmarshal([]byte(out), &got) != nil || got.ID != "apr-used" || got.UsedBy[0] != "deploy-2" {
		t.Fatalf("show --json: exit %d\n%s", code, out)
	}
	if code, _, errOut := run(t, append([]string{"approvals", "show", "apr-nope"}, bus...)...); code != cli.ExitError || !strings.Contains(errOut, `no approval request "apr-nope"`) {
		t.Fatalf("show of a missing id: exit %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "approvals", "approve"); code != cli.ExitUsage || !strings.Contains(errOut, "name one approval request id") {
		t.Fatalf("approve without an id: exit %d %s", code, errOut)
	}
	if code, _, errOut := run(t, "approvals", "frobnicate"); code != cli.ExitUsage || !strings.Contains(errOut, "unknown subcommand") {
		t.Fatalf("unknown subcommand: exit %d %s", code, errOut)
	}
}
