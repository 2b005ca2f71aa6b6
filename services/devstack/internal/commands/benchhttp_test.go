package commands

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

func schemasRequest() schemas.Request {
	return schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-1"}, Context: map[string]any{"env": "staging"}}
}

// The load generator's keep-alive client sends the request as written
// (method, path, bearer token, body), reuses one connection for calls in
// turn, and, when the server has closed an idle connection meanwhile,
// sends the call again on a new one.
func TestKeepAliveClientReusesAndRecovers(t *testing.T) {
	t.Parallel()
	var conns, calls atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/authorize" || r.Header.Get("Authorization") != "Bearer tok" || string(b) != `{"a":1}` {
			http.Error(w, "bad request: "+r.Method+" "+r.URL.Path+" "+string(b), http.StatusBadRequest)
			return
		}
		_, _ = w.Write([]byte(`{"decision":"allow"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	k, err := newKeepAliveClient(srv.URL + "/v1/authorize")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		status, body, err := k.post(ctx, "tok", []byte(`{"a":1}`))
		if err != nil || status != http.StatusOK || !strings.Contains(string(body), "allow") {
			t.Fatalf("call %d: %d %s %v", i, status, body, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 calls in turn opened %d connections, want 1", n)
	}
	srv.CloseClientConnections() // the server drops the idle connection
	time.Sleep(50 * time.Millisecond)
	if status, _, err := k.post(ctx, "tok", []byte(`{"a":1}`)); err != nil || status != http.StatusOK {
		t.Fatalf("after the server closed the idle connection: %d %v", status, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (a new one after the close)", n)
	}
	if n := calls.Load(); n != 6 {
		t.Errorf("the server handled %d calls, want 6", n)
	}
}

// BenchmarkGatewayClient: one call of each load-generator client to a
// loopback server that answers at once (client and server CPU together),
// 8 callers per core in parallel.
func BenchmarkGatewayClient(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{"decision":"allow"}`))
	}))
	b.Cleanup(srv.Close)
	for _, name := range []string{clientKeepAlive, clientNetHTTP} {
		b.Run(strings.ReplaceAll(name, "/", "-"), func(b *testing.B) {
			g, err := newGatewayCaller(srv.URL, schemasRequest(), name)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(g.close)
			b.SetParallelism(8) // 8 callers per core
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := g.authorize(context.Background(), "tok"); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
