-- Views for the common audit questions. Each reads FINAL, so a redelivered
-- event counts once (checked on 18.16: FINAL works inside a view there).
-- Filter on the view as on a table: WHERE clauses are applied to its output.

-- Every decision, de-duplicated.
CREATE VIEW IF NOT EXISTS {{db}}.decisions_final AS
SELECT * FROM {{db}}.decisions FINAL;

-- Every session event, de-duplicated.
CREATE VIEW IF NOT EXISTS {{db}}.session_events_final AS
SELECT * FROM {{db}}.session_events FINAL;

-- Who asked to retrain which model, when, and what aigov answered. Filter on
-- decision = 'allow' for the retrains that were let through.
CREATE VIEW IF NOT EXISTS {{db}}.retrains AS
SELECT
    event_time,
    event_time_us,
    resource_id AS model,
    principal_id,
    email,
    groups,
    decision,
    code,
    policy_ids,
    policy_version,
    context,
    request_id
FROM {{db}}.decisions FINAL
WHERE action = 'model.retrain';

-- When which dataset was allowed to reach which stage, and who asked.
CREATE VIEW IF NOT EXISTS {{db}}.dataset_promotions AS
SELECT
    event_time,
    event_time_us,
    resource_id AS dataset,
    principal_id,
    email,
    decision,
    code,
    context,
    request_id
FROM {{db}}.decisions FINAL
WHERE action = 'dataset.promote';

-- Denies per hour, stage and code: the dashboard of what is being refused.
CREATE VIEW IF NOT EXISTS {{db}}.denies_by_code_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    stage,
    code,
    count() AS denies,
    uniqExact(principal_id) AS principals
FROM {{db}}.decisions FINAL
WHERE decision = 'deny'
GROUP BY hour, stage, code;
