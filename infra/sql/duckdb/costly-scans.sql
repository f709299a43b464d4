-- Costly scans: requests whose SQL the analyser flagged as a full_table_scan, or whose estimated
-- or actual bytes (Snowflake's QUERY_HISTORY, read back by the executor) exceed {{bytes_threshold}},
-- with the prompt that produced the SQL, the estimate and what it really scanned side by side.
-- repository and run_id are the verified token's claims when it has them (the caller's otherwise).
-- Placeholders: {{since}}, {{until}}, {{bytes_threshold}}.
WITH dec AS (
  SELECT * FROM (
    SELECT request_id, occurred_at AS decided_at, subject, issuer, decision, findings, estimated_bytes,
           sql_text, tables, repository, run_id,
           row_number() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM audit_events
    WHERE event_type = 'PolicyDecided'
      AND occurred_at >= {{since}} AND occurred_at < {{until}}) t WHERE rn = 1
), req AS (
  SELECT * FROM (
    SELECT request_id, prompt, model, repository, run_id,
           row_number() OVER (PARTITION BY request_id ORDER BY occurred_at, "offset") AS rn
    FROM audit_events WHERE event_type = 'QueryRequested') t WHERE rn = 1
), done AS (
  SELECT request_id, max(bytes_scanned) AS bytes_scanned, max(rows_returned) AS rows_returned
  FROM audit_events WHERE event_type = 'QueryCompleted' GROUP BY request_id
)
SELECT dec.request_id,
       dec.decided_at,
       dec.subject,
       list_contains(dec.findings, 'full_table_scan') AS full_table_scan,
       dec.estimated_bytes,
       done.bytes_scanned,
       CASE WHEN dec.estimated_bytes > 0 THEN round(CAST(done.bytes_scanned AS DOUBLE) / dec.estimated_bytes, 2)
       END AS scanned_vs_estimate,
       dec.decision,
       dec.tables,
       req.model,
       coalesce(dec.repository, req.repository) AS repository,
       coalesce(dec.run_id, req.run_id) AS run_id,
       req.prompt,
       dec.sql_text
FROM dec
LEFT JOIN req ON req.request_id = dec.request_id
LEFT JOIN done ON done.request_id = dec.request_id
WHERE list_contains(dec.findings, 'full_table_scan') OR coalesce(dec.estimated_bytes, 0) > {{bytes_threshold}}
   OR coalesce(done.bytes_scanned, 0) > {{bytes_threshold}}
ORDER BY coalesce(done.bytes_scanned, dec.estimated_bytes, 0) DESC, dec.decided_at
