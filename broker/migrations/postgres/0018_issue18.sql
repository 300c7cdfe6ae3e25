-- Issue 18 (spend you can see coming).
--
-- Reports sum `spend` over a date range for everyone (GET /admin/v1/report): by settlement time.
CREATE INDEX spend_settled_at ON spend (settled_at);
