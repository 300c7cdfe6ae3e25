-- Forced (out-of-schedule) signing-key rotations. A row is a key that signs from `created` (the moment it
-- was requested plus a publication lead, so every replica has it in its JWKS before anyone signs with it)
-- until a newer key takes over. `generation` is the rotation generation `created` falls in; the key stays
-- published while that generation's tokens may live (the same retention rule as `signing_keys`).

CREATE TABLE signing_key_rotations (
    id           BIGSERIAL PRIMARY KEY,
    generation   BIGINT NOT NULL,
    kid          TEXT   NOT NULL UNIQUE,
    requested_at BIGINT NOT NULL,
    created      BIGINT NOT NULL,
    pkcs8        BYTEA  NOT NULL
);
CREATE INDEX signing_key_rotations_generation ON signing_key_rotations (generation);
