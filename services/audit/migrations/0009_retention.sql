-- Retention by policy (docs/privacy.md). The audit's retention job drops
-- whole expired partitions (every table is PARTITION BY toYYYYMM of its
-- event time, so this works on 18.16, which has no TTL). Before it drops a
-- partition of event_log it records, per stream, each run of chained rows
-- the partition held — the sequence range and the chain hash at its end —
-- signed with the audit's checkpoint key, so `aigov audit verify` reports
-- the range as retired by policy, not as missing, and checks the chain
-- across it.
CREATE TABLE IF NOT EXISTS {{db}}.retirements
(
    stream       String,
    from_seq     UInt64,
    to_seq       UInt64,
    chain_hash   String,
    partition_id UInt32,
    reason       String,
    retired_at   String,
    key_id       String,
    signature    String
)
ENGINE = ReplacingMergeTree
ORDER BY (stream, from_seq, to_seq);

-- Legal hold: a partition (YYYYMM) listed here is never dropped by the
-- retention job, whatever its age. Insert a row to hold, e.g.
-- INSERT INTO aigov.legal_holds (partition_id, reason, held_by, held_at) VALUES (202601, 'case 42', 'legal', now()).
CREATE TABLE IF NOT EXISTS {{db}}.legal_holds
(
    partition_id UInt32,
    reason       String,
    held_by      String,
    held_at      DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
ORDER BY partition_id;
