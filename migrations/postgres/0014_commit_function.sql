-- One round trip for the queue's commonest commits on a PostgreSQL store on another host:
-- accepting an event (its claims, action, steps and records) and finishing a step (the
-- lease-guarded update, the action's report, the records). The client computes every row,
-- the audit records chained onto the head it last committed included, and sends them as one
-- bound JSON parameter; this function takes the chain lock, checks that what the rows
-- assume still holds, and writes them, in the statement's own transaction. When an
-- assumption fails it writes nothing and says which, and the client runs the same work as
-- a transaction of several statements instead (src/audit/fast.rs). No SQL text is built
-- from the parameter: each field lands in a fixed column.
--
-- Answers: 'ok'; 'head' (the chain's last record is not the one the records chain onto);
-- 'taken' (an action or a claim exists already); 'others' (whether other steps of the
-- action are pending is not what the client assumed); 'lost' (the step's lease is not the
-- client's any more).
CREATE FUNCTION sever_commit(doc TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    d JSONB := doc::jsonb;
    -- JSON null and absent alike: no step.
    step JSONB := CASE WHEN jsonb_typeof(d->'step') = 'object' THEN d->'step' END;
    last_seq BIGINT;
    last_hash TEXT;
BEGIN
    -- The chain lock of every append (src/audit/mod.rs, begin_chain_tx).
    PERFORM pg_advisory_xact_lock(7262837);

    -- Checks first: nothing is written until every assumption holds, so an answer other
    -- than 'ok' leaves the store as it was.
    SELECT seq, hash INTO last_seq, last_hash FROM audit_records ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND
       OR last_seq IS DISTINCT FROM (d->>'head_seq')::BIGINT
       OR last_hash IS DISTINCT FROM d->>'head_hash' THEN
        RETURN 'head';
    END IF;
    IF EXISTS (
        SELECT 1 FROM actions
        WHERE action_id IN (SELECT a->>'action_id' FROM jsonb_array_elements(d->'actions') a)
    ) OR EXISTS (
        SELECT 1 FROM webhook_deliveries
        WHERE webhook_id IN (SELECT c->>'webhook_id' FROM jsonb_array_elements(d->'claims') c)
    ) THEN
        RETURN 'taken';
    END IF;
    IF step IS NOT NULL THEN
        IF EXISTS (
            SELECT 1 FROM action_steps
            WHERE action_id = step->>'action_id' AND target <> step->>'target'
              AND state = 'pending'
        ) IS DISTINCT FROM (step->>'others_pending')::BOOLEAN THEN
            RETURN 'others';
        END IF;
        -- The first write: when it finds no row, nothing has been written.
        UPDATE action_steps
        SET state = 'done', report = step->>'report', last_error = step->>'last_error',
            failure = CASE WHEN (step->>'failed')::BOOLEAN THEN failure ELSE NULL END,
            journal = NULL, lease_owner = NULL, lease_until = NULL
        WHERE action_id = step->>'action_id' AND target = step->>'target'
          AND lease_owner = step->>'owner' AND state = 'pending'
          AND attempts = (step->>'attempts')::BIGINT;
        IF NOT FOUND THEN
            RETURN 'lost';
        END IF;
    END IF;

    INSERT INTO webhook_deliveries (webhook_id, received_at, action_id)
    SELECT webhook_id, received_at, action_id
    FROM jsonb_to_recordset(COALESCE(d->'claims', '[]'))
         AS c(webhook_id TEXT, received_at TEXT, action_id TEXT);
    INSERT INTO actions (action_id, created_at, actor, plan, work, deadline, status,
                         finished_at, report, origin)
    SELECT action_id, created_at, actor, plan, work, deadline, status, finished_at, report,
           origin
    FROM jsonb_to_recordset(COALESCE(d->'actions', '[]'))
         AS a(action_id TEXT, created_at TEXT, actor TEXT, plan TEXT, work TEXT,
              deadline TEXT, status TEXT, finished_at TEXT, report TEXT, origin TEXT);
    -- A step is stored leased to the accepting process when its worker starts it at once.
    INSERT INTO action_steps (action_id, target, position, next_attempt_at, state, attempts,
                              lease_owner, lease_until)
    SELECT action_id, target, position, next_attempt_at, 'pending', COALESCE(attempts, 0),
           lease_owner, lease_until
    FROM jsonb_to_recordset(COALESCE(d->'steps', '[]'))
         AS s(action_id TEXT, target TEXT, position BIGINT, next_attempt_at TEXT,
              attempts BIGINT, lease_owner TEXT, lease_until TEXT);
    IF jsonb_typeof(d->'finished') = 'object' THEN
        UPDATE actions
        SET status = d->'finished'->>'status', finished_at = d->'finished'->>'finished_at',
            report = d->'finished'->>'report'
        WHERE action_id = d->'finished'->>'action_id';
    END IF;
    INSERT INTO audit_records (seq, id, at, kind, actor, action_id, detail, prev_hash, hash)
    SELECT seq, id, at, kind, actor, action_id, detail, prev_hash, hash
    FROM jsonb_to_recordset(COALESCE(d->'records', '[]'))
         AS r(seq BIGINT, id TEXT, at TEXT, kind TEXT, actor TEXT, action_id TEXT,
              detail TEXT, prev_hash TEXT, hash TEXT);
    RETURN 'ok';
END;
$$;
