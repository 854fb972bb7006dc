//! The services `scripts/test` provides answer: PostgreSQL creates databases, Redis answers PING.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn test_postgres_creates_fresh_databases() {
    use sqlx::Connection;
    let (one, two) = (
        common::fresh_postgres_db().await,
        common::fresh_postgres_db().await,
    );
    assert_ne!(one, two);
    let mut conn = sqlx::PgConnection::connect(&one).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(one.ends_with(&name), "{one} is database {name}");
}

#[tokio::test]
async fn test_redis_answers_ping() {
    let url = common::redis_url();
    // redis://[user:password@]host:port[/db]: the password-less test server needs host:port only.
    let rest = url.strip_prefix("redis://").unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority.rsplit('@').next().unwrap_or(authority);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PING\r\n").await.unwrap();
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
}
