package servicekit_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// freezer is a TCP proxy that can stop forwarding without closing either
// side: to the client, a paused server.
type freezer struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	done   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, s)
			f.mu.Unlock()
			f.wg.Go(func() { f.pipe(s, c) })
			f.wg.Go(func() { f.pipe(c, s) })
		}
	})
	t.Cleanup(func() {
		f.done.Store(true)
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// pipe copies src to dst, holding what it read while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for n > 0 && f.frozen.Load() {
			time.Sleep(10 * time.Millisecond)
			if f.done.Load() {
				return
			}
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			return
		}
	}
}

// A pull consumer notices a server that stopped answering (paused, or a
// link that drops everything without closing) within about twice
// servicekit.PullHeartbeat, not nats.go's default 30 s, and takes messages
// again once it answers (issue 18 d).
func TestPullNoticesAPausedServer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: an outage test: pauses the server for seconds; make test runs it")
	}
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{Open: true})
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	f := startFreezer(t, u.Host)
	proxied := u.Scheme + "://" + f.ln.Addr().String()
	_, js := srv.ConnectT(t, "test", func(o *nats.Options) error { o.Servers = []string{proxied}; return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: 5})
	if err != nil {
		t.Fatal(err)
	}
	_, djs := srv.ConnectT(t, "test")

	logs := &lockedBuffer{}
	r := servicekit.NewRunner("c", zerolog.New(logs), prometheus.NewRegistry(), 1)
	got := make(chan string, 4)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- r.Run(rctx, cons, func(_ context.Context, m jetstream.Msg) error {
			got <- string(m.Data())
			return nil
		})
	}()
	defer func() {
		stop()
		<-done
	}()
	if _, err := djs.Publish(ctx, "t.1", []byte("before")); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "before" {
		t.Fatalf("got %q", m)
	}

	f.frozen.Store(true)
	paused := time.Now()
	for !strings.Contains(logs.String(), jetstream.ErrNoHeartbeat.Error()) {
		if time.Since(paused) > 4*servicekit.PullHeartbeat {
			t.Fatalf("no missed heartbeat reported %s after the server stopped answering", time.Since(paused).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("paused server noticed after %s", time.Since(paused).Round(time.Millisecond))
	f.frozen.Store(false)
	if _, err := djs.Publish(ctx, "t.2", []byte("after")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "after" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(3 * servicekit.PullExpiry):
		t.Fatal("no message taken after the server answered again")
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
