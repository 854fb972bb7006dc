-- Profile and compatibility-login fields (issue 13): an optional e-mail alias (`1:` addresses and
-- the login form), display name and mood served by the profile endpoints, and an argon2 hash of the
-- legacy Skype password digest so `/login/skypetoken` can be checked without storing anything weaker.
ALTER TABLE accounts ADD COLUMN email TEXT;
ALTER TABLE accounts ADD COLUMN display_name TEXT;
ALTER TABLE accounts ADD COLUMN mood TEXT;
ALTER TABLE accounts ADD COLUMN legacy_hash TEXT;
CREATE UNIQUE INDEX accounts_email ON accounts (email) WHERE email IS NOT NULL;
