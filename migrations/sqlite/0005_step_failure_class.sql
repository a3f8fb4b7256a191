-- The class of a pending step's last failure (unreachable, transient, deterministic): only
-- steps whose failure may pass are woken when their target answers a probe, and a
-- deterministic failure is given up after a few attempts.
ALTER TABLE action_steps ADD COLUMN failure TEXT;
-- The fair claim looks up each allowed target's due steps.
CREATE INDEX action_steps_target_due ON action_steps (target, state, next_attempt_at);
