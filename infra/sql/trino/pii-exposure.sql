-- GENERATED from infra/sql/duckdb/pii-exposure.sql by `python -m sinks.report_sql --write`
-- (sqlglot, duckdb -> trino). Do not edit: edit the source and regenerate.
-- PII exposure: every request whose result reached the caller carrying data derived from a
-- classified column. exposure is
--   'unmasked'            a classified column reached the result in clear (QueryCompleted.columns
--                         with a classification and masked = false -> unmasked_classified),
--   'caught_by_detector'  raw values slipped past the SQL masking and the executor's detectors
--                         masked them after the fact (detector_hits),
--   'masked'              classified columns reached the result only masked (masked_columns).
-- Identity from PolicyDecided, prompt from QueryRequested. Placeholders: {{since}}, {{until}}.
WITH done AS (
  SELECT
    *
  FROM (
    SELECT
      request_id,
      occurred_at,
      rows_returned,
      masked_columns,
      unmasked_classified,
      detector_hits,
      classifications_touched,
      ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM iceberg.audit.events
    WHERE
      event_type = 'QueryCompleted'
      AND occurred_at >= {{since}}
      AND occurred_at < {{until}}
  ) AS t
  WHERE
    rn = 1
), dec AS (
  SELECT
    *
  FROM (
    SELECT
      request_id,
      subject,
      issuer,
      tables,
      sql_text,
      classifications_touched AS policy_classifications,
      ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM iceberg.audit.events
    WHERE
      event_type = 'PolicyDecided'
  ) AS t
  WHERE
    rn = 1
), req AS (
  SELECT
    *
  FROM (
    SELECT
      request_id,
      prompt,
      model,
      ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM iceberg.audit.events
    WHERE
      event_type = 'QueryRequested'
  ) AS t
  WHERE
    rn = 1
)
SELECT
  d.request_id,
  d.occurred_at AS completed_at,
  dec.subject,
  dec.issuer,
  CASE
    WHEN COALESCE(CARDINALITY(d.unmasked_classified), 0) > 0
    THEN 'unmasked'
    WHEN COALESCE(CARDINALITY(d.detector_hits), 0) > 0
    THEN 'caught_by_detector'
    ELSE 'masked'
  END AS exposure,
  d.unmasked_classified,
  d.masked_columns,
  d.detector_hits,
  dec.policy_classifications AS classifications,
  d.rows_returned,
  dec.tables,
  req.prompt,
  dec.sql_text
FROM done AS d
LEFT JOIN dec
  ON dec.request_id = d.request_id
LEFT JOIN req
  ON req.request_id = d.request_id
WHERE
  COALESCE(CARDINALITY(d.unmasked_classified), 0) > 0
  OR COALESCE(CARDINALITY(d.detector_hits), 0) > 0
  OR COALESCE(CARDINALITY(d.masked_columns), 0) > 0
  OR COALESCE(CARDINALITY(d.classifications_touched), 0) > 0
ORDER BY
  d.occurred_at,
  d.request_id
