-- What asked for each action (event, revocation, lock, …), as its own column so
-- GET /v1/actions can filter on it without reading every plan.
ALTER TABLE actions ADD COLUMN origin TEXT;
UPDATE actions SET origin = plan::json->>'origin';
CREATE INDEX actions_origin ON actions (origin);
