-- Account ids are never given again: tokens name the account id, so that an account removed and
-- added again under the same name is a different account to them. `accounts.id` comes from a
-- sequence, which never hands out a value twice as long as it does not cycle; say so explicitly
-- (SQLite needs a table for the same guarantee: its migration 0009).
ALTER SEQUENCE accounts_id_seq NO CYCLE;
