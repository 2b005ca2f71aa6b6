-- approvals_used read context.approvals of decisions, which the stored
-- context never holds (policy derives the approvals at decision time and
-- records their use as an approval.used event instead). It now lists those
-- uses: one row per approver of every allowed request that needed
-- approvals, with who asked and the teams that counted.
-- DROP TABLE drops a view on every server version (DROP VIEW is newer).
DROP TABLE IF EXISTS {{db}}.approvals_used;
CREATE VIEW IF NOT EXISTS {{db}}.approvals_used AS
SELECT
    event_time,
    event_time_us,
    request_id,
    action,
    resource_type,
    resource_id,
    requester AS principal_id,
    approver,
    reason AS teams,
    approval_id
FROM {{db}}.approvals FINAL
WHERE status = 'used';
