package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// aigov authorize from a tenant's account (--tenant): the request goes
// through the tenant's service import and the decision comes back on the
// tenant's inbox. A stand-in for authn answers every request with a deny
// naming the tenant the request came from.
func TestAuthorizeAsTenant(t *testing.T) {
	t.Parallel()
	const tenant = "platform-a"
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{tenant}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, js := srv.ConnectT(t, schemas.RoleAuthn)
	topo := topology.New("")
	cons, err := topo.Bind(ctx, js, schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	keys := devkeys.New(t)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		from, action, err := topo.Subjects.RequestOf(m.Subject())
		ev, perr := schemas.ParseEvent(m.Data())
		var req schemas.Request
		reply := m.Headers().Get(schemas.HeaderReplyTo)
		if err != nil || perr != nil || ev.DecodeData(&req) != nil || !schemas.ReplyAllowed(from, reply) {
			return
		}
		d := schemas.Decision{RequestID: ev.ID, Action: action, Resource: req.Resource, Decision: schemas.Deny, Code: "test", Reason: "from " + from}
		out, _ := schemas.NewEvent("d-"+ev.ID, "test", schemas.TypeDecision, time.Now(), d)
		// Signed for its decision subject, as authn signs its denies.
		stored, _ := schemas.EventMessage(topo.Subjects.Decision(action), out)
		keys.Signer(schemas.RoleAuthn).SignMsgs([]*nats.Msg{stored})
		_ = nc.PublishMsg(schemas.ReplyMessage(reply, stored))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	tok := filepath.Join(t.TempDir(), "t.jwt")
	if err := os.WriteFile(tok, []byte("x.y.z\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AIGOV_NATS_PASSWORD": srv.Password(tenant), "AIGOV_NATS_TENANT": tenant}
	var out, errOut bytes.Buffer
	code := cli.Run(ctx, []string{"authorize", "--nats", srv.URL(), "--tls-ca", srv.CAFile(), "--user", tenant,
		"--action", "model.deploy", "--resource", "Model:m1", "--token-file", tok, "--timeout", "20s", "--json", "--trust-file", keys.TrustFile}, &out, &errOut, mapLookup(env))
	if code != cli.ExitDeny || !strings.Contains(out.String(), "from "+tenant) {
		t.Fatalf("exit %d, stdout %s, stderr %s; want the deny answered to %s", code, out.String(), errOut.String(), tenant)
	}
}
