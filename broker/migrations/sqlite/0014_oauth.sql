-- Issue 14 (people sign in): the broker's OAuth authorization server keeps its short-lived state here,
-- so every replica on the store serves every step of a sign-in. Secrets (session ids, codes, device
-- codes, refresh tokens) are stored only as SHA-256 digests; `data` is the step's JSON.

-- A browser's sign-in, from /oauth/authorize (or the device page) to the consent: minutes.
CREATE TABLE oauth_logins (
    id_hash    TEXT   NOT NULL PRIMARY KEY,
    idp_state  TEXT   NOT NULL UNIQUE,
    data       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oauth_logins_expires ON oauth_logins (expires_at);

-- Authorization codes: single-use, a minute. `family_id` is the sign-in they started (a replayed code
-- revokes it).
CREATE TABLE oauth_codes (
    code_hash  TEXT   NOT NULL PRIMARY KEY,
    client_id  TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    family_id  TEXT
);
CREATE INDEX oauth_codes_expires ON oauth_codes (expires_at);

-- Device authorization (RFC 8628): `status` pending → approved | denied → consumed.
CREATE TABLE oauth_devices (
    device_hash   TEXT   NOT NULL PRIMARY KEY,
    user_code     TEXT   NOT NULL UNIQUE,
    client_id     TEXT   NOT NULL,
    data          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    identity      TEXT,
    interval_secs BIGINT NOT NULL,
    last_poll_at  BIGINT,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX oauth_devices_expires ON oauth_devices (expires_at);

-- A sign-in: one refresh-token family, bound to its client and person.
CREATE TABLE oauth_families (
    family_id      TEXT   NOT NULL PRIMARY KEY,
    client_id      TEXT   NOT NULL,
    idp            TEXT   NOT NULL,
    subject        TEXT   NOT NULL,
    principal      TEXT   NOT NULL,
    identity       TEXT   NOT NULL,
    scope          TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX oauth_families_principal ON oauth_families (principal);
CREATE INDEX oauth_families_subject ON oauth_families (subject);

-- Refresh tokens: each used once; a second use revokes its family.
CREATE TABLE oauth_refresh (
    token_hash TEXT   NOT NULL PRIMARY KEY,
    family_id  TEXT   NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX oauth_refresh_family ON oauth_refresh (family_id);

-- Access tokens minted for a family, so revoking the family revokes them (by jti) at the next request.
CREATE TABLE oauth_access (
    jti        TEXT   NOT NULL PRIMARY KEY,
    family_id  TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oauth_access_family ON oauth_access (family_id);
