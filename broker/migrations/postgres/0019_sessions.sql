-- Issue 15 (spend by session).
--
-- The Codex session a request belongs to, from the headers Codex sends (`session-id`, `thread-id`,
-- `originator`, `x-openai-subagent`, and `turn_id` / `request_kind` from `x-codex-turn-metadata`),
-- validated and length-bounded by the broker. NULL for requests without them and for requests settled
-- before this migration.
ALTER TABLE spend ADD COLUMN session_id TEXT;
ALTER TABLE spend ADD COLUMN thread_id TEXT;
ALTER TABLE spend ADD COLUMN turn_id TEXT;
ALTER TABLE spend ADD COLUMN request_kind TEXT;
ALTER TABLE spend ADD COLUMN originator TEXT;
ALTER TABLE spend ADD COLUMN subagent TEXT;

-- `GET /admin/v1/sessions/{id}` reads one session's rows.
CREATE INDEX spend_session ON spend (session_id) WHERE session_id IS NOT NULL;
