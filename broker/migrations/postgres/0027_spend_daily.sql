-- Issue 19 (the cost per request): a principal's settled spend per UTC day, kept by the settlement batch in
-- the transaction that inserts the spend rows (only rows inserted then count, so a retried batch adds
-- nothing twice). It answers `GET /v1/tollgate/usage` and replaces the (principal, settled_at) index on
-- `spend`, whose entries land wherever each principal's rows sort: with many principals settling at once,
-- every batch wrote one index page per principal (50 principals: about 3 KB of extra WAL per request).
-- Keyed day first, today's rows sit together whatever the number of principals.
CREATE TABLE spend_daily (
    day                 BIGINT NOT NULL,
    principal           TEXT   NOT NULL,
    requests            BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cache_write_tokens  BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost                BIGINT NOT NULL,
    estimated_requests  BIGINT NOT NULL,
    estimated_cost      BIGINT NOT NULL,
    incomplete          BIGINT NOT NULL,
    PRIMARY KEY (day, principal)
);

INSERT INTO spend_daily
SELECT (settled_at / 86400) * 86400, principal, COUNT(*), SUM(input_tokens), SUM(cached_input_tokens),
       SUM(cache_write_tokens), SUM(output_tokens), SUM(reasoning_tokens), SUM(cost),
       SUM(CASE WHEN end_reason = 'estimated' THEN 1 ELSE 0 END),
       SUM(CASE WHEN end_reason = 'estimated' THEN cost ELSE 0 END),
       SUM(CASE WHEN end_reason = 'completed' THEN 0 ELSE 1 END)
FROM spend
GROUP BY (settled_at / 86400) * 86400, principal;

DROP INDEX spend_principal_time;
