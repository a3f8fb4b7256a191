-- A drain with lock_accounts (issue 19, MySQL/MariaDB) locks several accounts on one target
-- under its own id: a lock row is one login of one lock on one target.
ALTER TABLE locks DROP CONSTRAINT locks_pkey;
ALTER TABLE locks ADD PRIMARY KEY (lock_id, target, login);
