-- GENERATED from infra/sql/duckdb/bypass.sql by `python -m sinks.report_sql --write`
-- (sqlglot, duckdb -> spark). Do not edit: edit the source and regenerate.
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
    GET_JSON_OBJECT(payload_json, '$.user_name') AS user_name,
    GET_JSON_OBJECT(payload_json, '$.role_name') AS role_name,
    GET_JSON_OBJECT(payload_json, '$.warehouse_name') AS warehouse_name,
    GET_JSON_OBJECT(payload_json, '$.related_request_id') AS related_request_id,
    GET_JSON_OBJECT(payload_json, '$.started_at') AS started_at,
    GET_JSON_OBJECT(payload_json, '$.detail') AS detail,
    sql_text,
    ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at NULLS LAST, `offset` NULLS LAST) AS rn
  FROM querytrail.audit.events
  WHERE
    event_type = 'BypassDetected'
    AND occurred_at >= {{since}}
    AND occurred_at < {{until}}
) AS t
WHERE
  rn = 1
ORDER BY
  found_at NULLS LAST,
  finding NULLS LAST
