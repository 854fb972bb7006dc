-- History sync (§6). Messages stay in `messages`, keyed by conversation (the sorted pair of a one-to-one
-- exchange, or a thread id); each account gets its own row per conversation it takes part in, because
-- what recent-conversations lists, the properties, and where history starts are per account.
CREATE TABLE conversations (
    account         TEXT NOT NULL,              -- account name, lower case
    id              TEXT NOT NULL,              -- the id this account sees: 8:bob, 19:…@thread.skype
    conversation    TEXT NOT NULL,              -- messages.conversation
    version         INTEGER NOT NULL,           -- ms of the last change (message or property)
    last_message_id INTEGER,                    -- newest message, NULL until one is stored
    history_from    INTEGER NOT NULL DEFAULT 0, -- ms: older messages are not this account's (joined later)
    PRIMARY KEY (account, id)
);
CREATE INDEX conversations_recent ON conversations (account, version, id);

-- PUT MSGR\CONVERSATION: stored as given, per account and conversation, in the order first set.
CREATE TABLE conversation_properties (
    account  TEXT NOT NULL,
    id       TEXT NOT NULL,
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (account, id, name)
);

-- ACK MSGR, per endpoint. The message is known when the Ack-Id was handed out on the same connection.
CREATE TABLE message_acks (
    id           INTEGER PRIMARY KEY,
    account      TEXT NOT NULL,
    epid         TEXT NOT NULL,
    ack_id       TEXT NOT NULL,
    conversation TEXT,
    message_id   INTEGER,
    acked_ms     INTEGER NOT NULL
);
CREATE INDEX message_acks_endpoint ON message_acks (account, epid, acked_ms);

-- Messages stored before this migration: give both sides their conversation row.
INSERT OR IGNORE INTO conversations (account, id, conversation, version)
    SELECT substr(sender, 3), recipient, conversation, 0 FROM messages GROUP BY sender, recipient, conversation;
INSERT OR IGNORE INTO conversations (account, id, conversation, version)
    SELECT substr(recipient, 3), sender, conversation, 0 FROM messages GROUP BY sender, recipient, conversation;
UPDATE conversations SET
    last_message_id = (SELECT MAX(m.message_id) FROM messages m WHERE m.conversation = conversations.conversation),
    version = (SELECT MAX(m.message_id) FROM messages m WHERE m.conversation = conversations.conversation);
