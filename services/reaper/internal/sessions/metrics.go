package sessions

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aigov/aigov/schemas"
)

type metrics struct {
	started prometheus.Counter
	tokens  prometheus.Counter
	expired *prometheus.CounterVec
	tracked prometheus.Gauge
	// coalesced counts requests whose record write was skipped.
	coalesced prometheus.Counter
	// lapsed counts session records whose TTL lapsed before an expiry
	// pass ended them (a reaper outage), ended from their purge marker.
	lapsed prometheus.Counter
	// lookups counts verified requests by where their session was read:
	// memory (the live view) or kv (the bucket path).
	lookups *prometheus.CounterVec
	// lookupsMemory and lookupsKV are its children, looked up once.
	lookupsMemory, lookupsKV prometheus.Counter
	// conflicts counts compare-and-set writes of a record from the
	// in-memory view that another writer won.
	conflicts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		started: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_reaper_sessions_started_total",
			Help: "Sessions the reaper saw for the first time.",
		}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_reaper_tokens_issued_total",
			Help: "New tokens (issuances or refreshes) seen in known sessions.",
		}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_reaper_sessions_expired_total",
			Help: "Sessions the reaper ended, by reason: max_age or idle.",
		}, []string{"reason"}),
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "aigov_reaper_sessions_tracked",
			Help: "Live sessions found by the last expiry pass (a lower bound when the pass was truncated by AIGOV_REAPER_MAX_SCAN).",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_reaper_touches_coalesced_total",
			Help: "Requests of a known token whose session record was not rewritten (last_seen younger than AIGOV_REAPER_TOUCH_GRANULARITY).",
		}),
		lapsed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_reaper_sessions_lapsed_total",
			Help: "Session records whose TTL lapsed before an expiry pass ended them (reaper outage); each was revoked as expired from its purge marker.",
		}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_reaper_session_lookups_total",
			Help: "Verified requests by where their session was read: memory (the live view, no KV round trip) or kv (a new session, a conflict, or a view not loaded).",
		}, []string{"via"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_reaper_session_write_conflicts_total",
			Help: "Session record writes from the in-memory view that another writer (replica, kill switch, expiry pass) won; each is retried from the newer record.",
		}),
	}
	for _, c := range []prometheus.Collector{m.started, m.tokens, m.expired, m.tracked, m.coalesced, m.lapsed, m.lookups, m.conflicts} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("register reaper metrics: %w", err)
		}
	}
	// Both reasons exist from the start so that rate() sees the first one.
	for _, reason := range []string{schemas.ReasonMaxAge, schemas.ReasonIdle} {
		m.expired.WithLabelValues(reason)
	}
	m.lookupsMemory, m.lookupsKV = m.lookups.WithLabelValues("memory"), m.lookups.WithLabelValues("kv")
	return m, nil
}
