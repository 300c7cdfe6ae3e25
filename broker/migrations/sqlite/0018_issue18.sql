-- Issue 18 (spend you can see coming).
--
-- Reports sum `spend` over a date range for everyone (GET /admin/v1/report): by settlement time.
CREATE INDEX spend_settled_at ON spend (settled_at);

-- Which price charged each request: the price table entry's version (`builtin-2025-11-01`, `litellm-…`,
-- `config-…`) and the service tier and long-context band (`standard`, `priority above 272000`). Empty for
-- requests settled before this migration.
ALTER TABLE spend ADD COLUMN price_version TEXT NOT NULL DEFAULT '';
ALTER TABLE spend ADD COLUMN price_tier TEXT NOT NULL DEFAULT '';

-- Budget alerts: one row per budget counter (budget × subject × window) and mark (`50%`, `80%`, `soft`).
-- The replica whose insert creates the row emits the alert; every other replica's insert does nothing, so
-- each mark alerts once across the fleet.
CREATE TABLE budget_alerts (
    budget_id    TEXT   NOT NULL,
    subject      TEXT   NOT NULL,
    period_start BIGINT NOT NULL,
    threshold    TEXT   NOT NULL,
    spent        BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (budget_id, subject, period_start, threshold)
);

-- Scheduled reports (`[alerts] weekly_report`): one row per report and period; the replica whose insert
-- creates it sends the report.
CREATE TABLE scheduled_reports (
    name         TEXT   NOT NULL,
    period_start BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (name, period_start)
);
