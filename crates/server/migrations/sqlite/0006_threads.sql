-- Group chats (§7). A thread's own row holds what NFY MSGR\THREAD shows; its members are kept in join
-- order (`seq`), because the longest-standing member becomes admin when the last admin leaves. Its
-- messages live in `messages` under the thread id, like any conversation.
CREATE TABLE threads (
    id         TEXT PRIMARY KEY,          -- 19:<32 hex>@thread.skype
    creator    TEXT NOT NULL,             -- 8:name
    topic      TEXT NOT NULL DEFAULT '',
    version    INTEGER NOT NULL,          -- ms of the last change, strictly increasing
    closed     INTEGER NOT NULL DEFAULT 0 -- 1 once the last member left
);

CREATE TABLE thread_members (
    thread    TEXT NOT NULL,
    account   TEXT NOT NULL,              -- account name, lower case
    role      TEXT NOT NULL,              -- admin | user
    joined_ms INTEGER NOT NULL,
    seq       INTEGER NOT NULL,           -- join order within the thread
    PRIMARY KEY (thread, account)
);
CREATE INDEX thread_members_account ON thread_members (account);

-- A member who leaves keeps its conversation row: sync shows the thread with <lastleaveat> and its
-- history ends at the message that removed it.
ALTER TABLE conversations ADD COLUMN left_at INTEGER;
