package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// TestPrivacyErasureEndToEnd runs the whole stack: authn seals each
// subject's email, name and a configured personal context field before
// anything is retained, so neither ClickHouse nor the NATS store holds
// them in clear (the stored bytes are searched); the keyed pseudonym still
// groups a person's rows; `aigov privacy export` (a privacy officer's
// governed privacy.export, exportAttacks) returns exactly the subject's
// events, opened; `aigov privacy erase` is denied without the
// risk reviewers' approval (and to a non-admin), then allowed once two
// approve, destroying the key: the subject's rows in ClickHouse and its
// messages in the streams no longer open, the export says it was erased,
// the erasure is a signed governance row, another subject is untouched,
// and `aigov audit verify` passes before and after.
func TestPrivacyErasureEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, bin := built.root, built.bin
	dir := t.TempDir()
	st, err := stack.Start(ctx, stack.Options{
		Root: root, Dir: dir, BinDir: bin,
		Personas: map[string]idp.Persona{
			"paula": {Subject: "paula", Email: "paula@aigov.example", Name: "Paula Park", Groups: []string{"policy-admins"}},
			"erin":  {Subject: "erin", Email: "erin.erased@privacy.example", Name: "Erin Erasmus", Groups: []string{"data-scientists"}},
			"kim":   {Subject: "kim", Email: "kim.kept@privacy.example", Name: "Kim Keeper", Groups: []string{"data-scientists"}},
		},
		ServiceEnv: []string{"AIGOV_PERSONAL_CONTEXT_FIELDS=patient_ref"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	iss := st.IdP.Issuer()

	tokenFile := func(persona string) string { return personaToken(ctx, t, st, persona) }
	aigov := func(args ...string) (int, string, string) {
		t.Helper()
		return runCLI(ctx, t, bin, args...)
	}
	bus := []string{"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--trust-file", st.Keys.TrustFile, "--password", st.NATS.Password(schemas.RoleOperator)}
	chFlags := []string{"--clickhouse", st.ClickHouse.SecureAddr(), "--clickhouse-tls", "--clickhouse-tls-ca", st.ClickHouse.CAFile(), "--database", stack.Database}
	count := func(q string, args ...any) uint64 {
		t.Helper()
		var n uint64
		if err := st.DB.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}

	// Two requests each, one of them with the personal context field.
	var ids []string
	for _, who := range []string{"erin", "kim"} {
		tok, err := st.IdP.Token(ctx, who)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range []map[string]any{{"environment": "staging"}, {"environment": "staging", "patient_ref": "PR-" + who + "-4711"}} {
			d, err := st.Client.Authorize(ctx, client.Call{Token: tok, Request: schemas.Request{Action: "model.retrain",
				Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"}, Context: c}})
			if err != nil {
				t.Fatalf("%s request %d: %v", who, i, err)
			}
			if d.Principal == nil || !strings.HasPrefix(d.Principal.Email, personal.CipherPrefix) {
				t.Fatalf("%s's decision carries the email %v, want it sealed", who, d.Principal)
			}
			ids = append(ids, d.RequestID)
		}
	}
	natsdev.WaitFor(t, 30*time.Second, "the four decisions in ClickHouse", func() bool {
		return count("SELECT count() FROM aigov.decisions FINAL WHERE has(?, request_id)", ids) == 4
	})

	// Nothing personal in clear: not in any column of the audit tables...
	secrets := []string{"erin.erased@privacy.example", "Erin Erasmus", "PR-erin-4711", "kim.kept@privacy.example", "PR-kim-4711"}
	for _, s := range secrets {
		for _, q := range []string{
			"SELECT count() FROM aigov.decisions WHERE position(email, ?) > 0 OR position(context, ?) > 0 OR position(reason, ?) > 0",
			"SELECT count() FROM aigov.event_log WHERE position(data, ?) > 0 OR position(data, ?) > 0 OR position(data, ?) > 0",
		} {
			if n := count(q, s, s, s); n != 0 {
				t.Errorf("%q in clear in %d rows: %s", s, n, q)
			}
		}
	}
	// ...nor anywhere in the NATS server's store (every stream and bucket,
	// the retained ones and the work queue alike).
	grepStore := func() {
		t.Helper()
		err := filepath.WalkDir(filepath.Join(dir, "nats"), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, s := range secrets {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("%q in clear in the NATS store: %s", s, path)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	grepStore()
	// The keyed pseudonym still groups a person's rows.
	for _, who := range []string{"erin", "kim"} {
		var n, pseudonyms uint64
		var p string
		if err := st.DB.QueryRow(ctx, "SELECT count(), uniqExact(subject_pseudonym), any(subject_pseudonym) FROM aigov.decisions FINAL WHERE subject = ?", who).Scan(&n, &pseudonyms, &p); err != nil {
			t.Fatal(err)
		}
		if n != 2 || pseudonyms != 1 || !strings.HasPrefix(p, "hmac-sha256:") {
			t.Fatalf("%s: %d rows, %d pseudonyms (%q), want 2 rows under one", who, n, pseudonyms, p)
		}
	}

	export := func(who string) (map[string]map[string]any, string) {
		t.Helper()
		code, out, errOut := aigov(append(append([]string{"privacy", "export", "--token-file", tokenFile("priya")}, append(chFlags, bus...)...), "--subject", iss, who)...)
		if code != 0 {
			t.Fatalf("export %s: exit %d\n%s%s", who, code, out, errOut)
		}
		got := map[string]map[string]any{}
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var obj map[string]any
			if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
				t.Fatalf("export line %q: %v", sc.Text(), err)
			}
			if obj["kind"] == "decision" {
				got[obj["request_id"].(string)] = obj
			}
		}
		return got, errOut
	}
	checkClear := func(who string) {
		t.Helper()
		got, _ := export(who)
		if len(got) != 2 {
			t.Fatalf("export of %s: %d decisions, want exactly its 2: %v", who, len(got), got)
		}
		refs := 0
		for _, obj := range got {
			if obj["email"] != who+map[string]string{"erin": ".erased", "kim": ".kept"}[who]+"@privacy.example" {
				t.Fatalf("export of %s: email %v, want it in clear", who, obj["email"])
			}
			if c, _ := obj["context"].(map[string]any); c["patient_ref"] != nil {
				if c["patient_ref"] != "PR-"+who+"-4711" {
					t.Fatalf("export of %s: patient_ref %v, want it in clear", who, c["patient_ref"])
				}
				refs++
			}
		}
		if refs != 1 {
			t.Fatalf("export of %s: %d opened patient_ref, want 1", who, refs)
		}
	}
	checkClear("erin")
	checkClear("kim")
	exportAttacks(ctx, t, st, bin, bus, chFlags, tokenFile)
	if out, code := auditVerify(ctx, t, st, bin); code != 0 {
		t.Fatalf("audit verify before the erasure: exit %d\n%s", code, out)
	}

	// Erasure is governed: a data scientist is denied outright; a policy
	// admin without the reviewers' approval is denied approval_required.
	erase := func(persona string) schemas.Decision {
		t.Helper()
		code, out, errOut := aigov(append(append([]string{"privacy", "erase", "--json", "--token-file", tokenFile(persona)}, bus...), "--subject", iss, "erin")...)
		var d schemas.Decision
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("erase as %s: exit %d %q %s: %v", persona, code, out, errOut, err)
		}
		if (code == 0) != d.Allowed() {
			t.Fatalf("erase as %s: exit %d for %s", persona, code, d.Decision)
		}
		return d
	}
	if d := erase("alice"); d.Allowed() || d.Code != schemas.CodePolicyDenied {
		t.Fatalf("erase by a data scientist: %s/%s, want policy_denied", d.Decision, d.Code)
	}
	d := erase("paula")
	if d.Allowed() || d.Code != schemas.CodeApprovalRequired || !regexp.MustCompile(`^apr-[0-9a-f]+$`).MatchString(d.ApprovalID) {
		t.Fatalf("erase without approval: %s/%s approval %q, want approval_required", d.Decision, d.Code, d.ApprovalID)
	}
	checkClear("erin") // nothing erased yet
	// erin's key as stored, to look for it on disk after the erasure.
	ajs, err := jetstream.New(st.Admin)
	if err != nil {
		t.Fatal(err)
	}
	akv, err := ajs.KeyValue(ctx, topology.New(schemas.DefaultPrefix).BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	erinRaw, err := personal.NewSubjectKeys(akv).Get(ctx, personal.SubjectKeyID(iss, "erin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, reviewer := range []string{"rita", "ravi"} {
		if code, out, errOut := aigov(append([]string{"approvals", "approve", d.ApprovalID, "--token-file", tokenFile(reviewer)}, bus...)...); code != 0 {
			t.Fatalf("approve as %s: exit %d %s%s", reviewer, code, out, errOut)
		}
	}
	if d := erase("paula"); !d.Allowed() {
		t.Fatalf("erase after two approvals: %s/%s %s", d.Decision, d.Code, d.Reason)
	}

	// The key is gone, with no revision left in the bucket's stream.
	js, err := jetstream.New(st.Admin)
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.New(schemas.DefaultPrefix)
	kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	erinKey := personal.SubjectKeyID(iss, "erin")
	if _, err := personal.NewSubjectKeys(kv).Get(ctx, erinKey); !errors.Is(err, personal.ErrErased) {
		t.Fatalf("erin's key after the erasure: %v, want erased", err)
	}
	ks, err := js.Stream(ctx, "KV_"+topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ks.GetLastMsgForSubject(ctx, "$KV."+topo.BucketSubjectKeys()+"."+erinKey); err != nil || len(m.Data) != 0 {
		t.Fatalf("the key stream still holds %d bytes for erin (%v)", len(m.Data), err)
	}
	// erin's messages in the decisions stream are sealed under that key,
	// which no longer exists; kim's still open.
	cache := personal.NewCache(kv, 0)
	ds, err := js.Stream(ctx, topo.StreamDecisions())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ds.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	opened := map[string]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := ds.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ev, err := schemas.ParseEvent(m.Data)
		if err != nil || ev.Type != schemas.TypeDecision {
			continue
		}
		var dd schemas.Decision
		if err := json.Unmarshal(ev.Data, &dd); err != nil || dd.Principal == nil {
			continue
		}
		who := dd.Principal.Subject
		if who != "erin" && who != "kim" {
			continue
		}
		p := *dd.Principal
		_, err = personal.Open(ctx, cache, &p, dd.Context)
		switch {
		case who == "erin" && !errors.Is(err, personal.ErrErased):
			t.Errorf("erin's stream message %d after the erasure: %v, want erased", seq, err)
		case who == "kim" && (err != nil || p.Email != "kim.kept@privacy.example"):
			t.Errorf("kim's stream message %d: %v %q", seq, err, p.Email)
		}
		opened[who]++
	}
	if opened["erin"] != 2 || opened["kim"] != 2 {
		t.Fatalf("decision messages found: %v, want 2 each", opened)
	}

	// In ClickHouse: erin's rows are still there, sealed, unreadable; the
	// export says she was erased; kim's export is unchanged.
	got, errOut := export("erin")
	if len(got) != 2 || !strings.Contains(errOut, "WAS ERASED") {
		t.Fatalf("export of erin after the erasure: %d decisions, stderr %q", len(got), errOut)
	}
	for _, obj := range got {
		if e, _ := obj["email"].(string); !strings.HasPrefix(e, personal.CipherPrefix) {
			t.Fatalf("erin's exported email after the erasure: %q", e)
		}
	}
	checkClear("kim")
	if n := count("SELECT count() FROM aigov.decisions FINAL WHERE subject = 'erin'"); n != 2 {
		t.Fatalf("erin has %d decision rows after the erasure, want 2 (kept, sealed)", n)
	}
	natsdev.WaitFor(t, 30*time.Second, "the signed erasure in policy_changes", func() bool {
		return count("SELECT count() FROM aigov.policy_changes FINAL WHERE kind = 'privacy' AND version = ? AND changed_by = ?",
			erinKey, schemas.PrincipalID(iss, "paula")) == 1
	})
	grepStore()
	// The key's bytes are overwritten in the store, not only unindexed.
	err = filepath.WalkDir(filepath.Join(dir, "nats"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if bytes.Contains(b, erinRaw) {
			t.Errorf("erin's erased key is still on disk: %s", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, code := auditVerify(ctx, t, st, bin); code != 0 || strings.Contains(out, "BROKEN") {
		t.Fatalf("audit verify after the erasure: exit %d\n%s", code, out)
	}
}

// exportAttacks, on the whole stack: the operator's credential cannot read
// a subject key (permission error); a policy admin's export is denied
// policy_denied, reads nothing, and the deny is in ClickHouse; an
// officer's privacy.export whose key id is another person's is refused
// malformed_request; an allowed one returns erin's key wrapped to the
// officer's ephemeral key (it unwraps to the stored key), and neither the
// key nor the wrap is in the decision's ClickHouse rows or the NATS store.
func exportAttacks(ctx context.Context, t *testing.T, st *stack.Stack, bin string, bus, chFlags []string, tokenFile func(string) string) {
	t.Helper()
	iss := st.IdP.Issuer()
	topo := topology.New(schemas.DefaultPrefix)
	erinKey := personal.SubjectKeyID(iss, "erin")
	ajs, err := jetstream.New(st.Admin)
	if err != nil {
		t.Fatal(err)
	}
	akv, err := ajs.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	erinRaw, err := personal.NewSubjectKeys(akv).Get(ctx, erinKey)
	if err != nil {
		t.Fatal(err)
	}

	// The operator's credential no longer reaches the bucket: the server
	// refuses it (a permissions violation), nothing is read.
	denied := make(chan error, 8)
	onc, err := st.NATS.Connect(schemas.RoleOperator, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case denied <- err:
			default:
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer onc.Close()
	ojs, err := jetstream.New(onc)
	if err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
	kv, err := ojs.KeyValue(octx, topo.BucketSubjectKeys())
	if err == nil {
		_, err = kv.Get(octx, erinKey)
	}
	ocancel()
	if err == nil {
		t.Fatal("the operator's credential read erin's subject key")
	}
	select {
	case perr := <-denied:
		t.Logf("operator reading a subject key: %v (%v)", err, perr)
	case <-time.After(5 * time.Second):
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permission") {
			t.Fatalf("the operator reading a subject key failed with %v, not a permission error", err)
		}
	}

	count := func(q string, args ...any) uint64 {
		t.Helper()
		var n uint64
		if err := st.DB.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	// A policy admin is not a privacy officer: denied, nothing written,
	// the deny audited.
	code, out, errOut := runCLI(ctx, t, bin, append(append([]string{"privacy", "export", "--token-file", tokenFile("paula")}, append(chFlags, bus...)...), "--subject", iss, "erin")...)
	if code != 3 || out != "" || !strings.Contains(errOut, "policy_denied") {
		t.Fatalf("export by a policy admin: exit %d, stdout %q, stderr %q; want 3, nothing, policy_denied", code, out, errOut)
	}
	natsdev.WaitFor(t, 30*time.Second, "the policy admin's export deny in ClickHouse", func() bool {
		return count("SELECT count() FROM aigov.decisions FINAL WHERE action = 'privacy.export' AND subject = 'paula' AND decision = 'deny' AND code = 'policy_denied'") >= 1
	})

	// An officer asking for erin by name with kim's key id is refused.
	priya, err := st.IdP.Token(ctx, "priya")
	if err != nil {
		t.Fatal(err)
	}
	exporter, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	export := func(keyID string) schemas.Decision {
		t.Helper()
		d, err := st.Client.Authorize(ctx, client.Call{Token: priya, Request: schemas.Request{Action: schemas.ActionPrivacyExport,
			Resource: schemas.Resource{Type: schemas.DataSubjectsType, ID: schemas.DataSubjectsID},
			Context: map[string]any{schemas.ContextSubjectKeyID: keyID, schemas.ContextSubjectIssuer: iss, schemas.ContextSubjectSub: "erin",
				schemas.ContextExportPublicKey: personal.ExportPublicKey(exporter)}}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := export(personal.SubjectKeyID(iss, "kim")); d.Allowed() || d.Code != schemas.CodeMalformedRequest || d.WrappedSubjectKey != "" {
		t.Fatalf("export of erin under kim's key id: %s/%s %q, wrapped %q", d.Decision, d.Code, d.Reason, d.WrappedSubjectKey)
	}

	// Allowed: the key, wrapped to the officer's ephemeral key only.
	d := export(erinKey)
	if !d.Allowed() || !strings.HasPrefix(d.WrappedSubjectKey, personal.WrapPrefix) {
		t.Fatalf("export by a privacy officer: %s/%s %q, wrapped %q", d.Decision, d.Code, d.Reason, d.WrappedSubjectKey)
	}
	if k, err := personal.UnwrapKey(exporter, d.WrappedSubjectKey, erinKey, d.RequestID); err != nil || !bytes.Equal(k, erinRaw) {
		t.Fatalf("the wrapped key does not open to erin's key: %v", err)
	}
	natsdev.WaitFor(t, 30*time.Second, "the allowed export in ClickHouse", func() bool {
		return count("SELECT count() FROM aigov.decisions FINAL WHERE request_id = ? AND decision = 'allow'", d.RequestID) == 1
	})
	body := d.WrappedSubjectKey[len(personal.WrapPrefix):]
	for _, s := range []string{hex.EncodeToString(erinRaw), base64.StdEncoding.EncodeToString(erinRaw), base64.RawStdEncoding.EncodeToString(erinRaw), body} {
		if n := count("SELECT count() FROM aigov.decisions WHERE position(context, ?) > 0 OR position(reason, ?) > 0", s, s) +
			count("SELECT count() FROM aigov.event_log WHERE position(data, ?) > 0", s); n != 0 {
			t.Fatalf("key material %q… in %d audit rows", s[:12], n)
		}
	}
	err = filepath.WalkDir(st.Dir+"/nats", func(path string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if bytes.Contains(b, []byte(body)) {
			t.Errorf("the wrapped key is in the NATS store: %s", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
