-- Governance state: budget counters, reservations with leases, settled spend, revocations, signing keys.
-- Money columns are integer nano-dollars.

CREATE TABLE budget_counters (
    budget_id    TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    period_start BIGINT  NOT NULL,
    spent        BIGINT  NOT NULL DEFAULT 0,
    reserved     BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, subject, period_start)
);

CREATE TABLE reservations (
    id         TEXT   NOT NULL PRIMARY KEY,
    owner      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX reservations_expires ON reservations (expires_at);
CREATE INDEX reservations_owner ON reservations (owner);

CREATE TABLE reservation_items (
    reservation_id TEXT   NOT NULL,
    budget_id      TEXT   NOT NULL,
    subject        TEXT   NOT NULL,
    period_start   BIGINT NOT NULL,
    amount         BIGINT NOT NULL,
    PRIMARY KEY (reservation_id, budget_id, subject, period_start)
);

CREATE TABLE spend (
    id                  TEXT   NOT NULL PRIMARY KEY,
    settled_at          BIGINT NOT NULL,
    principal           TEXT   NOT NULL,
    team                TEXT,
    org                 TEXT,
    jti                 TEXT   NOT NULL,
    model               TEXT   NOT NULL,
    provider            TEXT   NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cache_write_tokens  BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost                BIGINT NOT NULL,
    reserved            BIGINT NOT NULL,
    usage_reported      BIGINT NOT NULL,
    end_reason          TEXT   NOT NULL
);
CREATE INDEX spend_principal_time ON spend (principal, settled_at);

CREATE TABLE revocations (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    revoked_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    generation BIGINT NOT NULL PRIMARY KEY,
    kid        TEXT   NOT NULL,
    created    BIGINT NOT NULL,
    pkcs8      BYTEA   NOT NULL
);
