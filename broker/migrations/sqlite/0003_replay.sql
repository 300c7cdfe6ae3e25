-- Replay guard: one row per single-use proof (an AWS SigV4 signature, hashed) until it can no longer be
-- fresh. Shared by every replica on the same store, so a signed request is accepted once per fleet.
CREATE TABLE replay_guard (
    claim_key  TEXT   NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX replay_guard_expires ON replay_guard (expires_at);
