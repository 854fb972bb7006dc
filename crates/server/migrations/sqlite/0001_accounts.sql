-- Accounts: names are stored in lower case; `generation` is bumped to revoke every token issued before.
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    generation    INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);

-- Every chat message accepted by SDG. `message_id` is the server id (arrival ms, unique per conversation).
CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    conversation      TEXT NOT NULL,
    message_id        INTEGER NOT NULL,
    sender            TEXT NOT NULL,
    sender_epid       TEXT NOT NULL,
    recipient         TEXT NOT NULL,
    client_message_id TEXT,
    message_type      TEXT NOT NULL,
    headers           TEXT NOT NULL,
    content           BLOB NOT NULL,
    arrival_ms        INTEGER NOT NULL,
    UNIQUE (conversation, message_id)
);
CREATE UNIQUE INDEX messages_client_id ON messages (conversation, sender, client_message_id)
    WHERE client_message_id IS NOT NULL;
