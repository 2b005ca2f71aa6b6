// Package server wires the gateway: the SDK client on the gateway's NATS
// connection, the decider that makes retries idempotent, the authorize
// API, and the listener they are served on.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/gateway/internal/config"
	"github.com/aigov/aigov/services/gateway/internal/decider"
	"github.com/aigov/aigov/services/gateway/internal/httpapi"
	"github.com/aigov/aigov/services/gateway/internal/mcpgw"
	"github.com/aigov/aigov/services/servicekit"
)

// Gateway is the running gateway.
type Gateway struct {
	log    zerolog.Logger
	client *client.Client
	ln     net.Listener
	srv    *http.Server
	// mcp is the MCP front end; nil without AIGOV_GATEWAY_MCP_CONFIG.
	mcp *mcpgw.Gateway
	// ShutdownTimeout bounds the wait for requests in flight.
	shutdownTimeout time.Duration
}

// New builds the gateway on what servicekit.Start built (NewGateway): its
// one worker serves the API until the service stops. deps.NC is the
// gateway's own connection (user gateway: it may publish requests and
// read its inbox, nothing else); deps.Trust holds authn's and policy's
// public keys: a reply counts as a decision only when one of them signed
// it.
func New(cfg config.Config, deps servicekit.Deps) ([]servicekit.Worker, error) {
	// Each upstream MCP server's start-up is bounded on its own (mcpgw).
	g, err := NewGateway(context.Background(), cfg, deps)
	if err != nil {
		return nil, err
	}
	return []servicekit.Worker{g.Run}, nil
}

// NewGateway connects the SDK client (and, with an MCP configuration,
// every upstream MCP server) and binds cfg.Addr, so a port clash fails
// start-up.
func NewGateway(ctx context.Context, cfg config.Config, deps servicekit.Deps) (*Gateway, error) {
	switch {
	case deps.NC == nil:
		return nil, errors.New("gateway: nil NATS connection")
	case deps.Trust == nil:
		return nil, errors.New("gateway: nil trust (AIGOV_TRUST_FILE is required)")
	case deps.HTTP == nil:
		return nil, errors.New("gateway: nil health and metrics server")
	}
	// A decision that comes after its caller's 504 is kept for the
	// retry; the decider exists only once the client does.
	var late atomic.Pointer[decider.Decider]
	c, err := client.New(deps.NC, client.Options{Prefix: cfg.Prefix, Source: cfg.Source, Timeout: cfg.DecisionTimeout, Trust: deps.Trust,
		Unclaimed: func(dec schemas.Decision) {
			if d := late.Load(); d != nil {
				d.Late(dec)
			}
		}})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	d, err := decider.New(c, decider.Options{Remember: cfg.Remember, MaxRemembered: cfg.MaxRemembered})
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	late.Store(d)
	api, err := httpapi.New(d, deps.Log.With().Str("component", "authorize").Logger(), deps.HTTP.Registry, httpapi.Options{
		DecisionTimeout: cfg.DecisionTimeout, MaxBodyBytes: cfg.MaxBodyBytes, MaxInFlight: cfg.MaxInFlight,
	})
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	mux := http.NewServeMux()
	api.Routes(mux)
	var mcp *mcpgw.Gateway
	if cfg.MCPConfig != "" {
		file, err := mcpgw.LoadFile(cfg.MCPConfig)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("gateway: AIGOV_GATEWAY_MCP_CONFIG: %w", err)
		}
		mcp, err = mcpgw.New(ctx, file, mcpgw.Deps{
			Log: deps.Log.With().Str("component", "mcp").Logger(), Auth: d, Decisions: api.Decisions(),
			DecisionTimeout: cfg.DecisionTimeout, Version: Version,
			ErrorCode: func(err error) string { _, code := httpapi.ErrorStatus(err); return code },
		})
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("gateway: %w", err)
		}
		mcp.Routes(mux, api.Limit)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := deps.HTTP.Ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, http.StatusNotFound, httpapi.Error{Error: httpapi.ErrNotFound, Message: "no such endpoint: " + r.URL.Path})
	})
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		if mcp != nil {
			mcp.Close()
		}
		_ = c.Close()
		return nil, fmt.Errorf("gateway: listen on %s: %w", cfg.Addr, err)
	}
	g := &Gateway{
		log: deps.Log, client: c, ln: ln, mcp: mcp, shutdownTimeout: cfg.DecisionTimeout + 5*time.Second,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      cfg.DecisionTimeout + 10*time.Second,
			IdleTimeout:       90 * time.Second,
			// A bearer token may be up to client.MaxTokenBytes.
			MaxHeaderBytes: client.MaxTokenBytes + 32<<10,
		},
	}
	return g, nil
}

// Version is the gateway's version in its MCP implementation info.
const Version = "1.0.0"

// Addr is the bound API address.
func (g *Gateway) Addr() string { return g.ln.Addr().String() }

// Run serves until ctx ends, then lets the requests in flight finish
// (bounded) and stops receiving decisions.
func (g *Gateway) Run(ctx context.Context) error {
	g.log.Info().Str("addr", g.Addr()).Msg("gateway serving")
	errc := make(chan error, 1)
	go func() { errc <- g.srv.Serve(g.ln) }()
	var errs []error
	select {
	case err := <-errc:
		errs = append(errs, fmt.Errorf("gateway: serve: %w", err))
	case <-ctx.Done():
		if g.mcp != nil {
			// MCP sessions hold streams open: end them first, so the
			// shutdown below waits only for requests in flight.
			g.mcp.Close()
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.shutdownTimeout)
		if err := g.srv.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("gateway: shutdown: %w", err))
		}
		cancel()
		<-errc // http.ErrServerClosed
	}
	if g.mcp != nil {
		g.mcp.Close()
	}
	if err := g.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("gateway: close client: %w", err))
	}
	return errors.Join(errs...)
}
