-- Privileged access: every request that touched a table tagged 'privileged' (policy tags on
-- PolicyDecided, or the analyser's privileged_table finding), whether it ran, when, and by which
-- identity. accessed_at is when execution started (ExecutionStarted), else when it was decided;
-- nightly = accessed_at inside the nightly batch window 00:00-05:00 UTC.
-- Placeholders: {{since}}, {{until}}.
WITH dec AS (
  SELECT * FROM (
    SELECT request_id, occurred_at AS decided_at, subject, issuer, service_account, actor, tables, decision,
           rules,
           row_number() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM audit_events
    WHERE event_type = 'PolicyDecided'
      AND (list_contains(tags, 'privileged') OR list_contains(findings, 'privileged_table'))) t WHERE rn = 1
), started AS (
  SELECT request_id, min(occurred_at) AS started_at FROM audit_events
  WHERE event_type = 'ExecutionStarted' GROUP BY request_id
), finished AS (
  SELECT request_id, max(CASE WHEN event_type = 'QueryCompleted' THEN 'completed' ELSE 'failed' END) AS outcome,
         max(rows_returned) AS rows_returned
  FROM audit_events WHERE event_type IN ('QueryCompleted', 'QueryFailed') GROUP BY request_id
)
SELECT dec.request_id,
       coalesce(s.started_at, dec.decided_at) AS accessed_at,
       s.started_at IS NOT NULL AS executed,
       hour(coalesce(s.started_at, dec.decided_at)) < 5 AS nightly,
       dec.subject,
       dec.issuer,
       dec.service_account,
       dec.actor,
       dec.tables,
       dec.decision,
       dec.rules,
       coalesce(f.outcome, CASE WHEN s.started_at IS NULL THEN 'not_run' ELSE 'unknown' END) AS outcome,
       f.rows_returned
FROM dec
LEFT JOIN started s ON s.request_id = dec.request_id
LEFT JOIN finished f ON f.request_id = dec.request_id
WHERE coalesce(s.started_at, dec.decided_at) >= {{since}} AND coalesce(s.started_at, dec.decided_at) < {{until}}
ORDER BY accessed_at, dec.request_id
