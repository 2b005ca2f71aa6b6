-- Typed tables for approvals, policy and entity changes, and anomalies, and
-- a microsecond insert time on decisions for the end-of-pipe lag. Like the
-- other tables they are ReplacingMergeTrees keyed by event, read FINAL.

-- Microseconds since the epoch when the writer inserted the row: with
-- event_time_us it gives the decision-to-audit lag per row.
ALTER TABLE {{db}}.decisions ADD COLUMN inserted_us UInt64;

-- One row per approval event (given, revoked, used, expired…): who approved
-- what, for whom, until when. Fields the producer did not send are empty.
CREATE TABLE IF NOT EXISTS {{db}}.approvals
(
    event_id       String,
    type           {{lc "String"}},
    approval_id    String,
    status         {{lc "String"}},
    request_id     String,
    action         {{lc "String"}},
    resource_type  {{lc "String"}},
    resource_id    String,
    approver       String,
    requester      String,
    reason         String,
    expires_at_us  UInt64,
    event_time     {{dt64}},
    event_time_us  UInt64,
    data           String {{codec "ZSTD(3)"}},
    nats_subject   String,
    stream         String,
    stream_seq     UInt64,
    inserted_at    DateTime('UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (approval_id, event_id)
{{ttl "event_time"}};

-- One row per change of the policy set or of the trusted entity store:
-- which version replaced which, and who changed it.
CREATE TABLE IF NOT EXISTS {{db}}.policy_changes
(
    event_id       String,
    type           {{lc "String"}},
    kind           {{lc "String"}},
    version        String,
    previous       String,
    changed_by     String,
    entity_type    String,
    entity_id      String,
    summary        String,
    event_time     {{dt64}},
    event_time_us  UInt64,
    data           String {{codec "ZSTD(3)"}},
    nats_subject   String,
    stream         String,
    stream_seq     UInt64,
    inserted_at    DateTime('UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (kind, event_id)
{{ttl "event_time"}};

-- One row per dead letter: a message some consumer gave up on
-- (max_deliveries, terminated) or that the audit could not decode (poison),
-- with the reason and the original bytes.
CREATE TABLE IF NOT EXISTS {{db}}.anomalies
(
    event_id       String,
    kind           {{lc "String"}},
    stream         {{lc "String"}},
    consumer       {{lc "String"}},
    stream_seq     UInt64,
    subject        String,
    reason         String,
    deliveries     UInt64,
    data           String {{codec "ZSTD(3)"}},
    event_time     {{dt64}},
    event_time_us  UInt64,
    dlq_seq        UInt64,
    inserted_at    DateTime('UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (stream, consumer, stream_seq, kind)
{{ttl "event_time"}};
