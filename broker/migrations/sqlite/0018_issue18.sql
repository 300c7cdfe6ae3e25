-- Issue 18 (spend you can see coming).
--
-- Reports sum `spend` over a date range for everyone (GET /admin/v1/report): by settlement time.
CREATE INDEX spend_settled_at ON spend (settled_at);

-- Which price charged each request: the price table entry's version (`builtin-2025-11-01`, `litellm-…`,
-- `config-…`) and the service tier and long-context band (`standard`, `priority above 272000`). Empty for
-- requests settled before this migration.
ALTER TABLE spend ADD COLUMN price_version TEXT NOT NULL DEFAULT '';
ALTER TABLE spend ADD COLUMN price_tier TEXT NOT NULL DEFAULT '';
