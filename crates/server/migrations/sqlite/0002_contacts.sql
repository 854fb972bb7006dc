-- Contact lists (§4.1): one row per (owner, contact) with the list bits forward (1), allow (2),
-- block (4) and pending (8). A row whose bits fall to 0 is deleted. Rows go with either account.
CREATE TABLE contacts (
    owner      TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    contact    TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    bits       INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, contact)
) WITHOUT ROWID;

-- Presence fan-out asks "who lists this account?".
CREATE INDEX contacts_by_contact ON contacts (contact, owner);
