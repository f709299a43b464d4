-- GENERATED from infra/sql/duckdb/privileged-access.sql by `python -m sinks.report_sql --write`
-- (sqlglot, duckdb -> spark). Do not edit: edit the source and regenerate.
-- Privileged access: every request that touched a table tagged 'privileged' (policy tags on
-- PolicyDecided, or the analyser's privileged_table finding), whether it ran, when, and by which
-- identity. accessed_at is when execution started (ExecutionStarted), else when it was decided;
-- nightly = accessed_at inside the nightly batch window 00:00-05:00 UTC.
-- Placeholders: {{since}}, {{until}}.
WITH dec AS (
  SELECT
    *
  FROM (
    SELECT
      request_id,
      occurred_at AS decided_at,
      subject,
      issuer,
      service_account,
      actor,
      tables,
      decision,
      rules,
      ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at NULLS LAST, `offset` NULLS LAST) AS rn
    FROM querytrail.audit.events
    WHERE
      event_type = 'PolicyDecided'
      AND (
        ARRAY_CONTAINS(tags, 'privileged')
        OR ARRAY_CONTAINS(findings, 'privileged_table')
      )
  ) AS t
  WHERE
    rn = 1
), started AS (
  SELECT
    request_id,
    MIN(occurred_at) AS started_at
  FROM querytrail.audit.events
  WHERE
    event_type = 'ExecutionStarted'
  GROUP BY
    request_id
), finished AS (
  SELECT
    request_id,
    MAX(CASE WHEN event_type = 'QueryCompleted' THEN 'completed' ELSE 'failed' END) AS outcome,
    MAX(rows_returned) AS rows_returned
  FROM querytrail.audit.events
  WHERE
    event_type IN ('QueryCompleted', 'QueryFailed')
  GROUP BY
    request_id
)
SELECT
  dec.request_id,
  COALESCE(s.started_at, dec.decided_at) AS accessed_at,
  NOT s.started_at IS NULL AS executed,
  HOUR(COALESCE(s.started_at, dec.decided_at)) < 5 AS nightly,
  dec.subject,
  dec.issuer,
  dec.service_account,
  dec.actor,
  dec.tables,
  dec.decision,
  dec.rules,
  COALESCE(f.outcome, CASE WHEN s.started_at IS NULL THEN 'not_run' ELSE 'unknown' END) AS outcome,
  f.rows_returned
FROM dec
LEFT JOIN started AS s
  ON s.request_id = dec.request_id
LEFT JOIN finished AS f
  ON f.request_id = dec.request_id
WHERE
  COALESCE(s.started_at, dec.decided_at) >= {{since}}
  AND COALESCE(s.started_at, dec.decided_at) < {{until}}
ORDER BY
  accessed_at NULLS LAST,
  dec.request_id NULLS LAST
