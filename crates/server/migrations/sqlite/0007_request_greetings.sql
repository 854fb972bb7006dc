-- The greeting a contact request carried (§10 `auth-request`), kept for the recipient's
-- `GET /users/self/contacts/auth-request`; the request itself is the pending bit in `contacts`.
CREATE TABLE request_greetings (
    owner    TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    sender   TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    greeting TEXT NOT NULL,
    PRIMARY KEY (owner, sender)
) WITHOUT ROWID;
