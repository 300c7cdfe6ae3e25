-- The hash-chained audit trail (see broker/src/audit). One row per record; `seq` is the chain position and
-- the primary key, so two replicas appending the same `seq` conflict and the loser re-chains on the new
-- head: one linear chain per database. `detail` is the JSON text exactly as hashed.

CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    ts            BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    actor         TEXT   NOT NULL,
    principal     TEXT,
    team          TEXT,
    model         TEXT,
    provider      TEXT,
    status        BIGINT,
    input_tokens  BIGINT,
    output_tokens BIGINT,
    cost_nanos    BIGINT,
    request_id    TEXT,
    jti           TEXT,
    expires_at    BIGINT,
    detail        TEXT   NOT NULL,
    prev_hash     TEXT   NOT NULL,
    hash          TEXT   NOT NULL
);
CREATE INDEX audit_log_kind_ts ON audit_log (kind, ts);
CREATE INDEX audit_log_kind_exp ON audit_log (kind, expires_at);

-- Append-only (defence in depth: the hash chain and signed checkpoints are what make tampering visible).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
