-- Secrets kept in the database (the PostgreSQL backend keeps its token key here so that every node
-- shares it; SQLite keeps the token key in the data directory, but implements the same call).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
