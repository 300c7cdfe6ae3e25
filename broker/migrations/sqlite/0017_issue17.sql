-- Issue 17 (nothing lost, nothing leaked).
--
-- A principal revocation's cutoff: a UUIDv7 taken when it was made, ordered like token ids (`jti` is a
-- UUIDv7 too), so a token minted after the revocation — even in the same second — is not refused. NULL for
-- revocations made before (they keep the one-second rule).
ALTER TABLE revocations ADD COLUMN cutoff TEXT;

-- Facts every replica must agree on. `issuer`: the `public_url` the replicas using this store issue tokens
-- as, and until when one of them was last seen alive (a replica with another issuer is refused at start).
CREATE TABLE store_meta (
    name       TEXT   NOT NULL PRIMARY KEY,
    value      TEXT   NOT NULL,
    live_until BIGINT NOT NULL
);

-- Signing keys retired at once by an operator (`POST /admin/v1/keys/retire`): they leave every replica's
-- JWKS on its next key poll and every token they signed is refused. The keys themselves stay (audit
-- checkpoints they signed can still be checked).
CREATE TABLE signing_key_retirements (
    kid        TEXT   NOT NULL PRIMARY KEY,
    retired_at BIGINT NOT NULL,
    reason     TEXT
);
