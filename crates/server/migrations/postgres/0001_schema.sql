-- The same schema as the SQLite migrations 0001..0008, in one step (PostgreSQL storage starts
-- fresh). Key and ordering columns use the "C" collation so that names and ids sort byte-wise, as
-- SQLite sorts them, whatever the database's default collation is.

CREATE TABLE accounts (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    email         TEXT COLLATE "C",
    display_name  TEXT,
    mood          TEXT,
    legacy_hash   TEXT
);
CREATE UNIQUE INDEX accounts_email ON accounts (email) WHERE email IS NOT NULL;

-- `message_id` is the server id (arrival ms, unique and increasing per conversation).
CREATE TABLE messages (
    id                BIGSERIAL PRIMARY KEY,
    conversation      TEXT COLLATE "C" NOT NULL,
    message_id        BIGINT NOT NULL,
    sender            TEXT COLLATE "C" NOT NULL,
    sender_epid       TEXT NOT NULL,
    recipient         TEXT NOT NULL,
    client_message_id TEXT COLLATE "C",
    message_type      TEXT NOT NULL,
    headers           TEXT NOT NULL,
    content           BYTEA NOT NULL,
    arrival_ms        BIGINT NOT NULL,
    UNIQUE (conversation, message_id)
);
CREATE UNIQUE INDEX messages_client_id ON messages (conversation, sender, client_message_id)
    WHERE client_message_id IS NOT NULL;

-- The newest message id of each conversation. Allocating an id updates this row, whose lock
-- orders concurrent writers of one conversation, across server processes too.
CREATE TABLE conversation_heads (
    conversation    TEXT COLLATE "C" PRIMARY KEY,
    last_message_id BIGINT NOT NULL
);

CREATE TABLE contacts (
    owner      TEXT COLLATE "C" NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    contact    TEXT COLLATE "C" NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    bits       BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (owner, contact)
);
CREATE INDEX contacts_by_contact ON contacts (contact, owner);

CREATE TABLE conversations (
    account         TEXT COLLATE "C" NOT NULL,
    id              TEXT COLLATE "C" NOT NULL,
    conversation    TEXT COLLATE "C" NOT NULL,
    version         BIGINT NOT NULL,
    last_message_id BIGINT,
    history_from    BIGINT NOT NULL DEFAULT 0,
    left_at         BIGINT,
    PRIMARY KEY (account, id)
);
CREATE INDEX conversations_recent ON conversations (account, version, id);

CREATE TABLE conversation_properties (
    account  TEXT COLLATE "C" NOT NULL,
    id       TEXT COLLATE "C" NOT NULL,
    name     TEXT COLLATE "C" NOT NULL,
    value    TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (account, id, name)
);

CREATE TABLE message_acks (
    id           BIGSERIAL PRIMARY KEY,
    account      TEXT COLLATE "C" NOT NULL,
    epid         TEXT NOT NULL,
    ack_id       TEXT NOT NULL,
    conversation TEXT,
    message_id   BIGINT,
    acked_ms     BIGINT NOT NULL
);
CREATE INDEX message_acks_endpoint ON message_acks (account, epid, acked_ms);

CREATE TABLE endpoint_settings (
    account    TEXT COLLATE "C" NOT NULL,
    epid       TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account, epid, kind)
);

CREATE TABLE account_settings (
    account    TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account, kind)
);

CREATE TABLE spam_reports (
    id            BIGSERIAL PRIMARY KEY,
    reporter      TEXT NOT NULL,
    reporter_epid TEXT NOT NULL,
    reported      TEXT NOT NULL,
    reported_at   BIGINT NOT NULL
);
CREATE INDEX spam_reports_time ON spam_reports (reported_at);

CREATE TABLE threads (
    id      TEXT COLLATE "C" PRIMARY KEY,
    creator TEXT NOT NULL,
    topic   TEXT NOT NULL DEFAULT '',
    version BIGINT NOT NULL,
    closed  BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE thread_members (
    thread    TEXT COLLATE "C" NOT NULL,
    account   TEXT COLLATE "C" NOT NULL,
    role      TEXT NOT NULL,
    joined_ms BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (thread, account)
);
CREATE INDEX thread_members_account ON thread_members (account);

CREATE TABLE request_greetings (
    owner    TEXT COLLATE "C" NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    sender   TEXT COLLATE "C" NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    greeting TEXT NOT NULL,
    PRIMARY KEY (owner, sender)
);

-- Secrets every node must share, such as the token signing key.
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
