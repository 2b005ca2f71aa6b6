package commands

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// keepAliveMaxIdle bounds the idle connections a keepAliveClient keeps;
// past it a finished call closes its connection.
const keepAliveMaxIdle = 1024

// keepAliveClient is the load generator's HTTP/1.1 client for POST
// /v1/authorize: each call writes its request and reads the answer on a
// kept-alive connection of its own, in the calling goroutine, as a
// blocking client (Python's http.client, curl) does. net/http's Transport
// runs two goroutines per connection and hands each call between three:
// on two busy cores each hand-off waits for a CPU, and that wait, the load
// generator's, counted as the gateway's (see docs/performance.md).
type keepAliveClient struct {
	addr, host, path string

	mu   sync.Mutex
	idle []*keepAliveConn
}

type keepAliveConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func newKeepAliveClient(rawURL string) (*keepAliveClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("bench: gateway URL %q: want http://host:port/path (%v)", rawURL, err)
	}
	return &keepAliveClient{addr: u.Host, host: u.Host, path: u.RequestURI()}, nil
}

// post sends body with the bearer token and returns the status and the
// answer's body (at most 1 MiB). A kept-alive connection the server has
// closed meanwhile fails before any answer: the call is sent once more on
// a new one.
func (k *keepAliveClient) post(ctx context.Context, token string, body []byte) (int, []byte, error) {
	for attempt := 0; ; attempt++ {
		c, reused, err := k.conn(ctx)
		if err != nil {
			return 0, nil, err
		}
		status, b, keep, err := k.roundTrip(ctx, c, token, body)
		if err != nil {
			_ = c.c.Close()
			if reused && attempt == 0 && !errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return 0, nil, err
		}
		k.put(c, keep)
		return status, b, nil
	}
}

func (k *keepAliveClient) conn(ctx context.Context) (*keepAliveConn, bool, error) {
	k.mu.Lock()
	if n := len(k.idle); n > 0 {
		c := k.idle[n-1]
		k.idle = k.idle[:n-1]
		k.mu.Unlock()
		return c, true, nil
	}
	k.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", k.addr)
	if err != nil {
		return nil, false, fmt.Errorf("bench: dial gateway: %w", err)
	}
	return &keepAliveConn{c: nc, br: bufio.NewReader(nc), bw: bufio.NewWriter(nc)}, false, nil
}

func (k *keepAliveClient) put(c *keepAliveConn, keep bool) {
	k.mu.Lock()
	if keep && len(k.idle) < keepAliveMaxIdle {
		k.idle = append(k.idle, c)
		c = nil
	}
	k.mu.Unlock()
	if c != nil {
		_ = c.c.Close()
	}
}

func (k *keepAliveClient) roundTrip(ctx context.Context, c *keepAliveConn, token string, body []byte) (status int, b []byte, keep bool, err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	if err := c.c.SetDeadline(deadline); err != nil {
		return 0, nil, false, err
	}
	w := c.bw
	_, _ = w.WriteString("POST " + k.path + " HTTP/1.1\r\nHost: " + k.host + "\r\nAuthorization: Bearer " + token +
		"\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
	_, _ = w.Write(body)
	if err := w.Flush(); err != nil {
		return 0, nil, false, fmt.Errorf("bench: send to gateway: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, nil, false, fmt.Errorf("bench: gateway answer: %w", err)
	}
	b, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	if err != nil {
		return 0, nil, false, fmt.Errorf("bench: gateway answer body: %w", err)
	}
	// A body cut at the limit leaves the rest on the connection.
	return resp.StatusCode, b, !resp.Close && len(b) < 1<<20, nil
}

// close closes the idle connections.
func (k *keepAliveClient) close() {
	k.mu.Lock()
	idle := k.idle
	k.idle = nil
	k.mu.Unlock()
	for _, c := range idle {
		_ = c.c.Close()
	}
}
