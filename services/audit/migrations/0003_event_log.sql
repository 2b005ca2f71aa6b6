-- The tamper-evident raw log: one row per position of an audited JetStream
-- stream. It replaces the events table of version 1 for writing, because
-- that table collapses rows by event id, and an event id republished
-- outside JetStream's duplicate window is two stream positions, both of
-- which the hash chain covers.
--
-- Each row carries its hash chain link: row_hash is SHA-256 over the row's
-- content, chain_hash = SHA-256(chain_hash of prev_seq || row_hash), in
-- stream-sequence order per stream (services/audit/chain documents the
-- exact encoding). Signed checkpoints of the chain live in JetStream KV,
-- outside ClickHouse; `aigov audit verify` recomputes the chain.
--
-- A migration is a template: the functions dt64, lc, codec and ttl expand to
-- DateTime64, LowCardinality, CODEC and TTL on servers that have them
-- (20.3 and later) and to the portable form on 18.16. event_time_us keeps
-- microseconds on every server.
CREATE TABLE IF NOT EXISTS {{db}}.event_log
(
    stream         {{lc "String"}},
    stream_seq     UInt64,
    event_id       String,
    type           {{lc "String"}},
    source         {{lc "String"}},
    nats_subject   {{lc "String"}},
    event_time     {{dt64}},
    event_time_us  UInt64,
    data           String {{codec "ZSTD(3)"}},
    invalid_reason String,
    prev_seq       UInt64,
    row_hash       String,
    chain_hash     String,
    inserted_at    DateTime('UTC'),
    inserted_us    UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
-- One row per stream position: a redelivered message collapses, and the
-- chain's order is the sorting order.
ORDER BY (stream, stream_seq)
{{ttl "event_time"}};

-- Rows written by version 1 (before the chain) are copied once; they have
-- no chain columns and `audit verify` reports them as before the chain's
-- start. Running this again inserts the same keys, which collapse.
INSERT INTO {{db}}.event_log (stream, stream_seq, event_id, type, source, nats_subject, event_time,
    event_time_us, data, invalid_reason, inserted_at)
SELECT stream, stream_seq, event_id, type, source, nats_subject, event_time, event_time_us, data,
    invalid_reason, inserted_at
FROM {{db}}.events;
