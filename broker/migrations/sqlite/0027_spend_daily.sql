-- Issue 19 (the cost per request): a principal's settled spend per UTC day, kept by the settlement batch in
-- the transaction that inserts the spend rows (only rows inserted then count, so a retried batch adds
-- nothing twice). It answers `GET /v1/tollgate/usage` and replaces the (principal, settled_at) index on
-- `spend`, whose entries land wherever each principal's rows sort: with many principals settling at once,
-- every batch wrote one index page per principal (50 principals: about 3 KB of extra WAL per request).
-- Keyed day first, today's rows sit together whatever the number of principals.
CREATE TABLE spend_daily (
    day                 INTEGER NOT NULL,
    principal           TEXT    NOT NULL,
    requests            INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens  INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    cost                INTEGER NOT NULL,
    estimated_requests  INTEGER NOT NULL,
    estimated_cost      INTEGER NOT NULL,
    incomplete          INTEGER NOT NULL,
    PRIMARY KEY (day, principal)
) WITHOUT ROWID;

INSERT INTO spend_daily
SELECT (settled_at / 86400) * 86400, principal, COUNT(*), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(cache_write_tokens), SUM(output_tokens), SUM(reasoning_tokens), SUM(cost),
       SUM(CASE WHEN end_reason = 'estimated' THEN 1 ELSE 0 END),
       SUM(CASE WHEN end_reason = 'estimated' THEN cost ELSE 0 END),
       SUM(CASE WHEN end_reason = 'completed' THEN 0 ELSE 1 END)
FROM spend
GROUP BY (settled_at / 86400) * 86400, principal;

DROP INDEX spend_principal_time;
