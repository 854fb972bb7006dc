-- What PUT MSGR\PARTNERS, \OPTIONS (per endpoint) and \NETWORKS (per account) last said, as the
-- server's canonical XML. They have no effect yet; they are kept for the admin CLI and later use.
CREATE TABLE endpoint_settings (
    account    TEXT NOT NULL,
    epid       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (account, epid, kind)
);

CREATE TABLE account_settings (
    account    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (account, kind)
);

-- PUT MSGR\REPORTSPAM: one row per reported alias. Kept when either account is removed: a report
-- is evidence for the operator.
CREATE TABLE spam_reports (
    id            INTEGER PRIMARY KEY,
    reporter      TEXT NOT NULL,
    reporter_epid TEXT NOT NULL,
    reported      TEXT NOT NULL,
    reported_at   INTEGER NOT NULL
);
CREATE INDEX spam_reports_time ON spam_reports (reported_at);
