-- Account ids are never given again: tokens name the account id, so that an account removed and
-- added again under the same name is a different account to them. A plain INTEGER PRIMARY KEY
-- reuses the largest id once its row is deleted; the highest id ever used is kept here instead,
-- and new accounts take the next one (`SqliteStorage::create_account`).
CREATE TABLE account_ids (last INTEGER NOT NULL);
INSERT INTO account_ids (last) SELECT COALESCE(MAX(id), 0) FROM accounts;
CREATE TRIGGER account_ids_high_water AFTER INSERT ON accounts
BEGIN
    UPDATE account_ids SET last = MAX(last, NEW.id);
END;
