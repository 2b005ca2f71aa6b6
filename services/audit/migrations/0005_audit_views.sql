-- Views for the auditors' questions. Each reads FINAL (or goes through a
-- view that does), so a redelivered event counts once. Filter a view as a
-- table: WHERE applies to its output. README.md has the SQL for each.

-- Who changed a model — retrained it, changed its hyperparameters,
-- overwrote its weights, promoted or deployed it — when, and the answer.
CREATE VIEW IF NOT EXISTS {{db}}.model_changes AS
SELECT
    event_time,
    event_time_us,
    action,
    resource_id AS model,
    principal_id,
    email,
    decision,
    code,
    policy_ids,
    context,
    request_id
FROM {{db}}.decisions FINAL
WHERE resource_type = 'Model'
  AND action IN ('model.retrain', 'model.update_hyperparameters', 'model.overwrite_weights',
                 'model.promote', 'model.deploy');

-- When a dataset was integrated into production (promoted, or updated with
-- environment production in its context), and by whom.
CREATE VIEW IF NOT EXISTS {{db}}.dataset_production AS
SELECT
    event_time,
    event_time_us,
    action,
    resource_id AS dataset,
    principal_id,
    email,
    decision,
    code,
    context,
    request_id
FROM {{db}}.decisions FINAL
WHERE resource_type = 'Dataset'
  AND (action = 'dataset.promote' OR visitParamExtractString(context, 'environment') = 'production');

-- What each principal asked to touch, and what was allowed.
CREATE VIEW IF NOT EXISTS {{db}}.resource_access AS
SELECT
    event_time,
    event_time_us,
    principal_id,
    email,
    action,
    resource_type,
    resource_id,
    decision,
    code,
    request_id
FROM {{db}}.decisions FINAL;

-- Decisions and denies per hour, action and deny code, with the deny rate
-- of that code among all of the action's decisions in the hour. Allows
-- appear with code ''. The subqueries are aliased: current releases refuse
-- an unaliased joined subquery (joined_subquery_requires_alias).
CREATE VIEW IF NOT EXISTS {{db}}.deny_rate_hourly AS
SELECT
    hour,
    action,
    code,
    denies,
    decisions,
    denies / decisions AS deny_rate
FROM
(
    SELECT toStartOfHour(event_time) AS hour, action, code, countIf(decision = 'deny') AS denies
    FROM {{db}}.decisions FINAL
    GROUP BY hour, action, code
) AS per_code
ANY LEFT JOIN
(
    SELECT toStartOfHour(event_time) AS hour, action, count() AS decisions
    FROM {{db}}.decisions FINAL
    GROUP BY hour, action
) AS per_action USING (hour, action);

-- Approvals given (and any later status such as revoked or used).
CREATE VIEW IF NOT EXISTS {{db}}.approvals_final AS
SELECT * FROM {{db}}.approvals FINAL;

-- Decisions that relied on approvals: the context aigov derived carries
-- the approvals it found for the request.
CREATE VIEW IF NOT EXISTS {{db}}.approvals_used AS
SELECT
    event_time,
    event_time_us,
    action,
    resource_type,
    resource_id,
    principal_id,
    email,
    decision,
    visitParamExtractRaw(context, 'approvals') AS approvals,
    request_id
FROM {{db}}.decisions FINAL
WHERE visitParamHas(context, 'approvals') AND visitParamExtractRaw(context, 'approvals') NOT IN ('[]', 'null', '');

-- Policy-set and entity-store changes.
CREATE VIEW IF NOT EXISTS {{db}}.policy_changes_final AS
SELECT * FROM {{db}}.policy_changes FINAL;

-- Dead letters and poison messages.
CREATE VIEW IF NOT EXISTS {{db}}.anomalies_final AS
SELECT * FROM {{db}}.anomalies FINAL;

-- The raw log without repeats.
CREATE VIEW IF NOT EXISTS {{db}}.event_log_final AS
SELECT * FROM {{db}}.event_log FINAL;
