-- aigov audit tables. Works on ClickHouse 18.16 and current releases, so it
-- uses no DateTime64, Map, JSON, Bool, LowCardinality, TTL or CODEC.
--
-- Every table is a ReplacingMergeTree whose sorting key identifies one event
-- and contains no time, so a redelivered event collapses into one row; the
-- version column is the JetStream stream sequence, so the collapse keeps the
-- same row whichever writer inserted last. Read with FINAL (or the views).
--
-- Sub-second time: DateTime has whole seconds, so each time that matters to
-- the order of events also has a *_us column with Unix microseconds.
--
-- {{db}} is replaced by the configured database name.

-- One row per decision, flattened for auditors' filters.
CREATE TABLE IF NOT EXISTS {{db}}.decisions
(
    event_id          String,
    request_id        String,
    source            String,
    event_time        DateTime('UTC'),
    event_time_us     UInt64,
    received_at       DateTime('UTC'),
    action            String,
    resource_type     String,
    resource_id       String,
    principal_id      String,
    principal_type    String,
    issuer            String,
    subject           String,
    email             String,
    groups            Array(String),
    scopes            Array(String),
    decision          Enum8('allow' = 1, 'deny' = 2),
    code              String,
    reason            String,
    stage             String,
    policy_ids        Array(String),
    policy_errors     Array(String),
    policy_version    String,
    session_key       String,
    token_fingerprint String,
    context           String,
    authn_us          UInt64,
    policy_us         UInt64,
    total_us          UInt64,
    nats_subject      String,
    stream_seq        UInt64,
    inserted_at       DateTime('UTC')
)
ENGINE = ReplacingMergeTree(stream_seq)
PARTITION BY toYYYYMM(event_time)
-- A request has one action and resource, so this key still names one
-- decision, and "who did what to model X" reads a narrow range.
ORDER BY (action, resource_type, resource_id, request_id);

-- The raw CloudEvent of every consumed event, and every message that could
-- not be decoded (type 'invalid', with the reason and the raw bytes in data).
CREATE TABLE IF NOT EXISTS {{db}}.events
(
    event_id       String,
    type           String,
    source         String,
    nats_subject   String,
    stream         String,
    stream_seq     UInt64,
    event_time     DateTime('UTC'),
    event_time_us  UInt64,
    data           String,
    invalid_reason String,
    inserted_at    DateTime('UTC')
)
ENGINE = ReplacingMergeTree(stream_seq)
PARTITION BY toYYYYMM(event_time)
ORDER BY (type, event_id);

-- One row per session event: started, expired, revoked, token_issued.
CREATE TABLE IF NOT EXISTS {{db}}.session_events
(
    event_id          String,
    type              String,
    session_key       String,
    issuer            String,
    subject           String,
    principal_id      String,
    sid               String,
    reason            String,
    `by`              String,
    request_id        String,
    token_fingerprint String,
    auth_time         Nullable(DateTime('UTC')),
    first_seen        DateTime('UTC'),
    last_seen         DateTime('UTC'),
    event_time        DateTime('UTC'),
    event_time_us     UInt64,
    nats_subject      String,
    stream_seq        UInt64,
    inserted_at       DateTime('UTC')
)
ENGINE = ReplacingMergeTree(stream_seq)
PARTITION BY toYYYYMM(event_time)
ORDER BY (session_key, event_id);
