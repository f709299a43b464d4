-- GENERATED from infra/sql/duckdb/bypass.sql by `python -m sinks.report_sql --write`
-- (sqlglot, duckdb -> trino). Do not edit: edit the source and regenerate.
-- Bypass: what `querytrail reconcile` found in Snowflake's query history that did not go through
-- querytrail as authorised (docs/warehouse.md): statements under querytrail's service user it never
-- authorised, statements tagged with a request but not its statement, authorised executions
-- Snowflake has no record of, and agents' statements that went around it. One row per finding.
-- Placeholders: {{since}}, {{until}}.
SELECT
  finding,
  found_at,
  kind,
  snowflake_query_id,
  user_name,
  role_name,
  warehouse_name,
  related_request_id,
  started_at,
  detail,
  sql_text
FROM (
  SELECT
    request_id AS finding,
    occurred_at AS found_at,
    reason_code AS kind,
    snowflake_query_id,
    JSON_EXTRACT_SCALAR(payload_json, '$.user_name') AS user_name,
    JSON_EXTRACT_SCALAR(payload_json, '$.role_name') AS role_name,
    JSON_EXTRACT_SCALAR(payload_json, '$.warehouse_name') AS warehouse_name,
    JSON_EXTRACT_SCALAR(payload_json, '$.related_request_id') AS related_request_id,
    JSON_EXTRACT_SCALAR(payload_json, '$.started_at') AS started_at,
    JSON_EXTRACT_SCALAR(payload_json, '$.detail') AS detail,
    sql_text,
    ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
  FROM iceberg.audit.events
  WHERE
    event_type = 'BypassDetected'
    AND occurred_at >= {{since}}
    AND occurred_at < {{until}}
) AS t
WHERE
  rn = 1
ORDER BY
  found_at,
  finding
