-- Issue 17 (requests in flight when a broker dies are charged, not released).
--
-- Each replica's admitted requests that have not yet been settled in the store, written off the request
-- path by its background round (every [store] poll_interval_ms: rows for requests admitted since the last
-- round are inserted, rows of requests settled since are deleted) and leased like its reservations
-- (`expires_at`, renewed by `owner`). When a lease runs out, the replica that finds it deletes the rows and,
-- in the same transaction, charges each request its reserved estimate as a `spend` row with
-- `end_reason = 'estimated'` (once: `spend.id` is the request id, so a settlement that did land, or a second
-- replica, charges nothing). `keys` are the budget counters it was admitted against, `record` the spend row
-- to insert (both JSON).
CREATE TABLE inflight (
    id         TEXT   NOT NULL PRIMARY KEY,
    owner      TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    keys       TEXT   NOT NULL,
    record     TEXT   NOT NULL
);
CREATE INDEX inflight_owner ON inflight (owner);
CREATE INDEX inflight_expires ON inflight (expires_at);
