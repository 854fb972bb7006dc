//! One suite for every `Storage` implementation: each test below runs against SQLite (a file in
//! a temporary directory) and against PostgreSQL (a fresh database, see `scripts/test`), so the
//! two backends are held to the same semantics.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use msnp24_proto::AccountName;
use msnp24_server::storage::list_bits::{ALLOW, BLOCK, FORWARD, PENDING};
use msnp24_server::storage::prelude::*;
use msnp24_server::storage::{
    conversation_key, AckRecord, ContactUpdate, NewMessage, Participant, PostgresStorage,
    ProfileUpdate, RecentPosition, Setting, SettingScope, SpamReport, SqliteStorage, Storage,
    StorageError, ThreadChange, ThreadMember, ThreadRecord,
};

/// A storage under test, with whatever must live as long as it.
struct Backend {
    storage: Arc<dyn Storage>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("db.sqlite3"))
        .await
        .unwrap();
    Backend {
        storage: Arc::new(storage),
        _dir: Some(dir),
    }
}

async fn postgres() -> Backend {
    let url = common::fresh_postgres_db().await;
    Backend {
        storage: Arc::new(PostgresStorage::open(&url).await.unwrap()),
        _dir: None,
    }
}

/// Generates `sqlite::<test>` and `postgres::<test>` for each test function.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let b = super::sqlite().await;
                    super::$test(b.storage.clone()).await;
                    b.storage.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let b = super::postgres().await;
                    super::$test(b.storage.clone()).await;
                    b.storage.close().await;
                }
            )*
        }
    };
}

suite!(
    accounts_create_conflict_lookup_and_remove,
    email_alias_and_profile,
    password_change_bumps_the_generation,
    messages_get_increasing_ids_and_retries_are_stored_once,
    concurrent_stores_are_each_stored_exactly_once,
    contact_rows_flow_and_block,
    concurrent_contact_updates_are_atomic,
    pending_requests_carry_their_greetings,
    recent_conversations_page_by_version_then_id,
    history_pages_newest_first_within_the_accounts_window,
    removed_name_taken_again_inherits_nothing,
    conversation_properties_merge_in_first_set_order,
    settings_and_spam_reports,
    thread_changes_track_joins_leaves_and_activity,
    secrets_are_created_once,
    acks_are_recorded,
    contact_names_resolve_in_one_batch,
);

fn name(n: &str) -> AccountName {
    AccountName::parse(n).unwrap()
}

async fn accounts(s: &dyn Storage, names: &[&str]) -> Vec<AccountName> {
    let mut out = Vec::new();
    for n in names {
        let nm = name(n);
        s.create_account(&nm, "hash", "legacy").await.unwrap();
        out.push(nm);
    }
    out
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A one-to-one message `from` → `to` at `arrival_ms`.
fn direct(from: &AccountName, to: &AccountName, text: &str, arrival_ms: i64) -> NewMessage {
    let (f, t) = (format!("8:{from}"), format!("8:{to}"));
    NewMessage {
        conversation: conversation_key(&f, &t),
        participants: vec![
            Participant {
                account: from.clone(),
                conversation_id: t.clone(),
            },
            Participant {
                account: to.clone(),
                conversation_id: f.clone(),
            },
        ],
        sender: f,
        sender_epid: "{00000000-0000-0000-0000-000000000001}".into(),
        recipient: t,
        client_message_id: None,
        message_type: "Text".into(),
        headers: "Content-Type: Text/plain; charset=UTF-8".into(),
        content: text.as_bytes().to_vec(),
        arrival_ms,
    }
}

fn update(owner: &AccountName, contact: &AccountName, set: u32, clear: u32) -> ContactUpdate {
    ContactUpdate {
        owner: owner.clone(),
        contact: contact.clone(),
        set,
        clear,
    }
}

fn texts(messages: &[msnp24_server::storage::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.message.content.clone()).unwrap())
        .collect()
}

async fn accounts_create_conflict_lookup_and_remove(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let bob = name("bob");
    let created = s.create_account(&bob, "h1", "l1").await.unwrap();
    assert_eq!(created.name, bob);
    assert_eq!(
        (
            created.password_hash.as_str(),
            created.legacy_hash.as_deref()
        ),
        ("h1", Some("l1"))
    );
    assert_eq!(created.generation, 1);
    assert!(created.created_at > 1_700_000_000);
    assert!(matches!(
        s.create_account(&bob, "h2", "l2").await,
        Err(StorageError::Conflict)
    ));
    s.create_account(&name("alice"), "h", "l").await.unwrap();
    s.create_account(&name("live:zed"), "h", "l").await.unwrap();
    assert_eq!(s.account(&bob).await.unwrap(), Some(created.clone()));
    assert_eq!(s.account(&name("nobody")).await.unwrap(), None);
    let listed: Vec<String> = s
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(listed, ["alice", "bob", "live:zed"]);

    assert!(s.remove_account(&bob).await.unwrap());
    assert!(!s.remove_account(&bob).await.unwrap());
    assert_eq!(s.account(&bob).await.unwrap(), None);
    // The name is free again, under a new id.
    let again = s.create_account(&bob, "h3", "l3").await.unwrap();
    assert_ne!(again.id, created.id);
    // Not even the newest id comes back once its account is gone (tokens name the id).
    assert!(s.remove_account(&bob).await.unwrap());
    let third = s.create_account(&bob, "h4", "l4").await.unwrap();
    assert!(third.id > again.id, "{} after {}", third.id, again.id);
}

async fn email_alias_and_profile(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob"]).await;
    let set = |email: Option<&str>, display: Option<&str>, mood: Option<&str>| ProfileUpdate {
        email: email.map(str::to_string),
        display_name: display.map(str::to_string),
        mood: mood.map(str::to_string),
    };
    assert!(s
        .update_profile(
            &n[0],
            &set(Some("Alice@Example.com"), Some("Alice A."), Some("hi"))
        )
        .await
        .unwrap());
    let a = s
        .account_by_email("ALICE@example.COM")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.name, n[0]);
    assert_eq!(a.email.as_deref(), Some("alice@example.com"));
    assert_eq!(
        (a.display_name.as_deref(), a.mood.as_deref()),
        (Some("Alice A."), Some("hi"))
    );
    // Another account cannot take the alias; the failed update changes nothing.
    assert!(matches!(
        s.update_profile(&n[1], &set(Some("alice@example.com"), Some("B"), None))
            .await,
        Err(StorageError::Conflict)
    ));
    assert_eq!(s.account(&n[1]).await.unwrap().unwrap().display_name, None);
    // None keeps a field, "" clears it.
    assert!(s
        .update_profile(&n[0], &set(None, Some(""), None))
        .await
        .unwrap());
    let a = s.account(&n[0]).await.unwrap().unwrap();
    assert_eq!(
        (
            a.email.as_deref(),
            a.display_name.as_deref(),
            a.mood.as_deref()
        ),
        (Some("alice@example.com"), None, Some("hi"))
    );
    assert!(s
        .update_profile(&n[0], &set(Some(""), None, None))
        .await
        .unwrap());
    assert_eq!(s.account_by_email("alice@example.com").await.unwrap(), None);
    // Now bob may have it.
    assert!(s
        .update_profile(&n[1], &set(Some("alice@example.com"), None, None))
        .await
        .unwrap());
    assert!(!s
        .update_profile(&name("nobody"), &set(None, Some("x"), None))
        .await
        .unwrap());
}

async fn password_change_bumps_the_generation(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice"]).await;
    assert!(s.set_password(&n[0], "new", "newlegacy").await.unwrap());
    assert!(s.set_password(&n[0], "newer", "newerlegacy").await.unwrap());
    let a = s.account(&n[0]).await.unwrap().unwrap();
    assert_eq!(a.generation, 3);
    assert_eq!(
        (a.password_hash.as_str(), a.legacy_hash.as_deref()),
        ("newer", Some("newerlegacy"))
    );
    assert!(!s.set_password(&name("nobody"), "x", "y").await.unwrap());
}

async fn messages_get_increasing_ids_and_retries_are_stored_once(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob"]).await;
    let (a, b) = (&n[0], &n[1]);
    let t = now_ms();
    let first = s.store_message(direct(a, b, "one", t)).await.unwrap();
    assert_eq!((first.message_id, first.duplicate), (t, false));
    // Same millisecond, then an earlier arrival: ids stay unique and increasing.
    let second = s.store_message(direct(b, a, "two", t)).await.unwrap();
    assert_eq!(second.message_id, t + 1);
    let third = s
        .store_message(direct(a, b, "three", t - 50))
        .await
        .unwrap();
    assert_eq!(third.message_id, t + 2);
    let later = s
        .store_message(direct(a, b, "four", t + 100))
        .await
        .unwrap();
    assert_eq!(later.message_id, t + 100);

    // A retry with the same client message id returns the first copy.
    let mut m = direct(a, b, "five", t + 100);
    m.client_message_id = Some("cmid-1".into());
    m.content = vec![0, 159, 146, 150, 255];
    let stored = s.store_message(m.clone()).await.unwrap();
    assert_eq!((stored.message_id, stored.duplicate), (t + 101, false));
    let mut retry = m.clone();
    retry.arrival_ms = t + 500;
    retry.content = b"changed".to_vec();
    let again = s.store_message(retry).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, t + 101);
    assert_eq!(again.message.content, m.content);
    // The same id from the other party is another message.
    let mut from_b = direct(b, a, "six", t + 100);
    from_b.client_message_id = Some("cmid-1".into());
    assert!(!s.store_message(from_b).await.unwrap().duplicate);

    let all = s
        .conversation_messages(&first.message.conversation)
        .await
        .unwrap();
    let ids: Vec<i64> = all.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, [t, t + 1, t + 2, t + 100, t + 101, t + 102]);
    assert_eq!(all[4].message.content, m.content);
    assert_eq!(all[4].message.client_message_id.as_deref(), Some("cmid-1"));
    assert_eq!(all[1].message.sender, "8:bob");
    assert_eq!(all[1].message.recipient, "8:alice");
    assert_eq!(all[2].message.arrival_ms, t - 50);
    assert!(all.iter().all(|m| !m.duplicate));
    // Another conversation has its own ids.
    let c = accounts(s, &["carol"]).await;
    assert_eq!(
        s.store_message(direct(a, &c[0], "x", t))
            .await
            .unwrap()
            .message_id,
        t
    );
}

async fn concurrent_stores_are_each_stored_exactly_once(s: Arc<dyn Storage>) {
    let n = accounts(s.as_ref(), &["alice", "bob", "carol", "dave"]).await;
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    // 4 conversations × 40 messages, each sent twice at once (a client retrying), all in the
    // same millisecond.
    for i in 0..160usize {
        let (from, to) = (&n[i % 2], &n[2 + (i / 2) % 2]);
        let mut m = direct(from, to, &format!("m{i}"), t);
        m.client_message_id = Some(format!("c{i}"));
        for _ in 0..2 {
            let (s, m) = (s.clone(), m.clone());
            tasks.spawn(async move { s.store_message(m).await.unwrap() });
        }
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap());
    }
    let originals = results.iter().filter(|r| !r.duplicate).count();
    assert_eq!(
        originals, 160,
        "each message stored once, each retry a duplicate"
    );
    // Both copies of a message got the same id.
    let mut by_cmid = std::collections::HashMap::new();
    for r in &results {
        let id = by_cmid
            .entry(r.message.client_message_id.clone().unwrap())
            .or_insert(r.message_id);
        assert_eq!(*id, r.message_id);
    }
    let mut total = 0;
    for (from, to) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        let key = conversation_key(&format!("8:{}", n[from]), &format!("8:{}", n[to]));
        let stored = s.conversation_messages(&key).await.unwrap();
        let ids: Vec<i64> = stored.iter().map(|m| m.message_id).collect();
        // Unique and increasing from the arrival time; PostgreSQL may skip an id where a retry
        // raced its first copy (see postgres.rs), so only SQLite's are known to be consecutive.
        assert_eq!(ids.first(), Some(&t), "{key}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{key}: {ids:?}");
        assert!(ids.iter().all(|&id| id < t + 80), "{key}: {ids:?}");
        let distinct: HashSet<_> = stored.iter().map(|m| m.message.content.clone()).collect();
        assert_eq!(distinct.len(), 40);
        total += stored.len();
    }
    assert_eq!(total, 160);
    // Each side's conversation row points at the newest message.
    let recent = s.recent_conversations(&n[0], 0, None, 10).await.unwrap();
    assert_eq!(recent.len(), 2);
    for c in &recent {
        let newest = s
            .conversation_messages(&c.key)
            .await
            .unwrap()
            .last()
            .unwrap()
            .message_id;
        assert_eq!(c.last_message.as_ref().unwrap().message_id, newest);
        assert_eq!(c.version, newest);
    }
}

async fn contact_rows_flow_and_block(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob", "carol"]).await;
    let (a, b, c) = (&n[0], &n[1], &n[2]);
    let changes = s
        .update_contacts(&[update(a, b, 3, 0), update(b, a, 2, 0), update(a, c, 1, 0)])
        .await
        .unwrap();
    assert_eq!(changes, [(0, 3), (0, 2), (0, 1)]);
    assert_eq!(s.presence_watchers(b).await.unwrap(), vec![a.clone()]);
    assert_eq!(s.presence_visible(a).await.unwrap(), vec![b.clone()]);
    assert!(s.presence_watchers(a).await.unwrap().is_empty());
    let rel = s
        .contact_relations(a, &[c.clone(), name("nobody"), b.clone()])
        .await
        .unwrap();
    assert_eq!(rel.len(), 2);
    assert_eq!(rel[0].name, *c);
    assert_eq!((rel[0].mine, rel[0].theirs), (1, 0));
    assert_eq!(rel[1].name, *b);
    assert_eq!((rel[1].mine, rel[1].theirs), (3, 2));
    let listed: Vec<(String, u32)> = s
        .contacts(a)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.to_string(), c.bits))
        .collect();
    assert_eq!(listed, [("bob".to_string(), 3), ("carol".to_string(), 1)]);

    // Setting bits already set changes nothing; clear applies after set.
    assert_eq!(
        s.update_contacts(&[update(a, b, FORWARD, 0)])
            .await
            .unwrap(),
        [(3, 3)]
    );
    assert_eq!(
        s.update_contacts(&[update(a, b, PENDING, PENDING | ALLOW)])
            .await
            .unwrap(),
        [(3, 1)]
    );
    s.update_contacts(&[update(a, b, ALLOW, 0)]).await.unwrap();

    assert!(!s.is_blocked(a, b).await.unwrap());
    s.update_contacts(&[update(b, a, BLOCK, 0)]).await.unwrap();
    assert!(s.is_blocked(a, b).await.unwrap() && s.is_blocked(b, a).await.unwrap());
    assert!(!s.is_blocked(a, c).await.unwrap());
    assert!(s.presence_watchers(b).await.unwrap().is_empty());
    assert!(s.presence_visible(a).await.unwrap().is_empty());

    // Clearing every bit deletes the row; removing an account removes its rows both ways.
    assert_eq!(
        s.update_contacts(&[update(a, c, 0, 15)]).await.unwrap(),
        [(1, 0)]
    );
    assert_eq!(
        s.update_contacts(&[update(a, c, 0, 15)]).await.unwrap(),
        [(0, 0)]
    );
    assert_eq!(s.contacts(a).await.unwrap().len(), 1);
    s.remove_account(b).await.unwrap();
    assert!(s.contacts(a).await.unwrap().is_empty());
    // A row about a name that is no account is refused, and the batch with it.
    assert!(s
        .update_contacts(&[
            update(a, c, FORWARD, 0),
            update(a, &name("ghost"), FORWARD, 0)
        ])
        .await
        .is_err());
    assert!(s.contacts(a).await.unwrap().is_empty());
}

async fn concurrent_contact_updates_are_atomic(s: Arc<dyn Storage>) {
    let n = accounts(s.as_ref(), &["alice", "bob", "carol"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    // Many writers set different bits on the same (new) rows, in both orders: none may lose
    // another's bit.
    for i in 0..40u32 {
        let s = s.clone();
        let (a, b, c) = (n[0].clone(), n[1].clone(), n[2].clone());
        let bit = 1 << (i % 4);
        tasks.spawn(async move {
            let batch = if i % 2 == 0 {
                vec![update(&a, &b, bit, 0), update(&a, &c, bit, 0)]
            } else {
                vec![update(&a, &c, bit, 0), update(&a, &b, bit, 0)]
            };
            s.update_contacts(&batch).await.unwrap()
        });
    }
    let mut seen_new = 0;
    while let Some(r) = tasks.join_next().await {
        for (old, new) in r.unwrap() {
            assert_eq!(new & old, old, "bits only grow here");
            if old == 0 {
                seen_new += 1;
            }
        }
    }
    // Each row was created by exactly one writer.
    assert_eq!(seen_new, 2);
    let bits: Vec<u32> = s
        .contacts(&n[0])
        .await
        .unwrap()
        .iter()
        .map(|c| c.bits)
        .collect();
    assert_eq!(bits, [15, 15]);
}

async fn pending_requests_carry_their_greetings(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob", "carol"]).await;
    let (a, b, c) = (&n[0], &n[1], &n[2]);
    s.update_contacts(&[update(a, b, PENDING, 0)])
        .await
        .unwrap();
    s.set_request_greeting(a, b, "hi, it's bob").await.unwrap();
    s.set_request_greeting(a, b, "hi again").await.unwrap();
    s.update_contacts(&[update(a, c, PENDING, 0)])
        .await
        .unwrap();
    let pending = s.pending_requests(a).await.unwrap();
    let got: Vec<(String, String)> = pending
        .iter()
        .map(|p| (p.sender.to_string(), p.greeting.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("bob".to_string(), "hi again".to_string()),
            ("carol".to_string(), String::new())
        ]
    );
    assert!(pending[0].at > 1_700_000_000);
    assert!(s.pending_requests(b).await.unwrap().is_empty());
    // Answering clears the bit, and the request is no longer listed.
    s.update_contacts(&[update(a, b, ALLOW | FORWARD, PENDING)])
        .await
        .unwrap();
    let left: Vec<String> = s
        .pending_requests(a)
        .await
        .unwrap()
        .iter()
        .map(|p| p.sender.to_string())
        .collect();
    assert_eq!(left, ["carol"]);
    // Greetings go with the sender's account.
    s.remove_account(c).await.unwrap();
    assert!(s.pending_requests(a).await.unwrap().is_empty());
}

async fn recent_conversations_page_by_version_then_id(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob", "carol", "dave", "erin"]).await;
    let a = &n[0];
    let t = now_ms() + 1_000;
    // bob and carol share a version (same ms, different conversations); dave is newest.
    s.store_message(direct(a, &n[1], "to bob", t))
        .await
        .unwrap();
    s.store_message(direct(&n[2], a, "from carol", t))
        .await
        .unwrap();
    s.store_message(direct(a, &n[3], "to dave", t + 10))
        .await
        .unwrap();
    s.store_message(direct(&n[4], a, "from erin", t - 10))
        .await
        .unwrap();
    let ids = |page: &[msnp24_server::storage::ConversationSummary]| -> Vec<String> {
        page.iter().map(|c| c.id.clone()).collect()
    };
    let all = s.recent_conversations(a, 0, None, 100).await.unwrap();
    assert_eq!(ids(&all), ["8:dave", "8:carol", "8:bob", "8:erin"]);
    let carol = &all[1];
    assert_eq!(carol.key, conversation_key("8:alice", "8:carol"));
    assert_eq!(carol.version, t);
    let last = carol.last_message.as_ref().unwrap();
    assert_eq!(last.message.content, b"from carol");
    assert_eq!(last.message.sender, "8:carol");

    // Pages of two, each starting strictly after the last one returned.
    let first = s.recent_conversations(a, 0, None, 2).await.unwrap();
    assert_eq!(ids(&first), ["8:dave", "8:carol"]);
    let after = RecentPosition {
        version: first[1].version,
        id: first[1].id.clone(),
    };
    let second = s.recent_conversations(a, 0, Some(&after), 2).await.unwrap();
    assert_eq!(ids(&second), ["8:bob", "8:erin"]);
    let after = RecentPosition {
        version: second[1].version,
        id: second[1].id.clone(),
    };
    assert!(s
        .recent_conversations(a, 0, Some(&after), 2)
        .await
        .unwrap()
        .is_empty());
    // start_ms leaves out conversations changed earlier.
    assert_eq!(
        ids(&s.recent_conversations(a, t, None, 100).await.unwrap()),
        ["8:dave", "8:carol", "8:bob"]
    );
    // The other side sees its own id.
    assert_eq!(
        ids(&s.recent_conversations(&n[1], 0, None, 10).await.unwrap()),
        ["8:alice"]
    );
    let one = s.conversation(a, "8:bob").await.unwrap().unwrap();
    assert_eq!(one.last_message.unwrap().message.content, b"to bob");
    assert_eq!(s.conversation(a, "8:nobody").await.unwrap(), None);
}

async fn history_pages_newest_first_within_the_accounts_window(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob"]).await;
    let (a, b) = (&n[0], &n[1]);
    let t = now_ms() + 1_000;
    for i in 0..10 {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        s.store_message(direct(from, to, &format!("m{i}"), t + i * 10))
            .await
            .unwrap();
    }
    let page = s.history(a, "8:bob", 0, None, 3).await.unwrap();
    assert_eq!(texts(&page), ["m9", "m8", "m7"]);
    let next = s
        .history(a, "8:bob", 0, Some(page[2].message_id), 3)
        .await
        .unwrap();
    assert_eq!(texts(&next), ["m6", "m5", "m4"]);
    // start_ms is inclusive.
    assert_eq!(
        texts(&s.history(b, "8:alice", t + 70, None, 100).await.unwrap()),
        ["m9", "m8", "m7"]
    );
    assert_eq!(s.history(a, "8:bob", 0, None, 100).await.unwrap().len(), 10);
    assert!(s
        .history(a, "8:nobody", 0, None, 100)
        .await
        .unwrap()
        .is_empty());
    // Messages from before an account existed are not its own: history_from is its creation.
    let row = s.conversation(a, "8:bob").await.unwrap().unwrap();
    let created = s.account(a).await.unwrap().unwrap().created_at;
    assert_eq!(row.history_from, created * 1000);
    let early = direct(a, b, "before alice existed", created * 1000 - 60_000);
    let c = accounts(s, &["carol"]).await;
    let mut to_carol = early.clone();
    to_carol.participants[1].account = c[0].clone();
    to_carol.conversation = conversation_key("8:alice", "8:carol");
    to_carol.recipient = "8:carol".into();
    to_carol.participants[0].conversation_id = "8:carol".into();
    s.store_message(to_carol).await.unwrap();
    assert!(s
        .history(&c[0], "8:alice", 0, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn removed_name_taken_again_inherits_nothing(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob"]).await;
    let t = now_ms();
    s.store_message(direct(&n[0], &n[1], "old", t))
        .await
        .unwrap();
    s.set_conversation_properties(&n[1], "8:alice", "k", &[("p".into(), "v".into())], t)
        .await
        .unwrap();
    assert!(s.remove_account(&n[1]).await.unwrap());
    // The other party keeps its view.
    assert_eq!(
        s.history(&n[0], "8:bob", 0, None, 10).await.unwrap().len(),
        1
    );
    s.create_account(&n[1], "h", "l").await.unwrap();
    assert!(s
        .recent_conversations(&n[1], 0, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .history(&n[1], "8:alice", 0, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn conversation_properties_merge_in_first_set_order(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob"]).await;
    let a = &n[0];
    let key = conversation_key("8:alice", "8:bob");
    let t = now_ms() + 1_000;
    let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let c = s
        .set_conversation_properties(a, "8:bob", &key, &p(&[("b", "1"), ("a", "2")]), t)
        .await
        .unwrap();
    assert_eq!(
        (c.id.as_str(), c.key.as_str(), c.version),
        ("8:bob", key.as_str(), t)
    );
    assert_eq!(c.properties, p(&[("b", "1"), ("a", "2")]));
    assert_eq!(c.last_message, None);
    // Replacing keeps the first position; the version keeps increasing in the same ms.
    let c = s
        .set_conversation_properties(a, "8:bob", &key, &p(&[("c", "3"), ("b", "4")]), t)
        .await
        .unwrap();
    assert_eq!(c.properties, p(&[("b", "4"), ("a", "2"), ("c", "3")]));
    assert_eq!(c.version, t + 1);
    let c = s
        .set_conversation_properties(a, "8:bob", &key, &[], t + 500)
        .await
        .unwrap();
    assert_eq!(c.version, t + 500);
    // A later message does not lower the version, and is listed with the properties.
    s.store_message(direct(&n[1], a, "hi", t + 100))
        .await
        .unwrap();
    let c = s.conversation(a, "8:bob").await.unwrap().unwrap();
    assert_eq!(c.version, t + 500);
    assert_eq!(c.last_message.unwrap().message.content, b"hi");
    assert_eq!(c.properties.len(), 3);
    let listed = s.recent_conversations(a, 0, None, 10).await.unwrap();
    assert_eq!(
        listed[0].properties,
        p(&[("b", "4"), ("a", "2"), ("c", "3")])
    );
    // Properties are per account.
    assert!(s
        .conversation(&n[1], "8:alice")
        .await
        .unwrap()
        .unwrap()
        .properties
        .is_empty());
}

async fn settings_and_spam_reports(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let setting = |account: &str, scope: SettingScope, kind: &str, value: &str, at: i64| Setting {
        account: account.into(),
        scope,
        kind: kind.into(),
        value: value.into(),
        updated_at: at,
    };
    let ep = |e: &str| SettingScope::Endpoint(e.into());
    s.put_setting(setting("8:bob", ep("{e2}"), "options", "<o/>", 1))
        .await
        .unwrap();
    s.put_setting(setting("8:alice", ep("{e1}"), "partners", "<p/>", 2))
        .await
        .unwrap();
    s.put_setting(setting(
        "8:alice",
        SettingScope::Account,
        "networks",
        "<n/>",
        3,
    ))
    .await
    .unwrap();
    s.put_setting(setting("8:alice", ep("{e1}"), "options", "<o1/>", 4))
        .await
        .unwrap();
    // Replacing one keeps a single row.
    s.put_setting(setting("8:alice", ep("{e1}"), "partners", "<p2/>", 5))
        .await
        .unwrap();
    assert_eq!(
        s.settings().await.unwrap(),
        [
            setting("8:alice", SettingScope::Account, "networks", "<n/>", 3),
            setting("8:alice", ep("{e1}"), "options", "<o1/>", 4),
            setting("8:alice", ep("{e1}"), "partners", "<p2/>", 5),
            setting("8:bob", ep("{e2}"), "options", "<o/>", 1),
        ]
    );

    let report = |reported: &str, at: i64| SpamReport {
        reporter: "8:alice".into(),
        reporter_epid: "{e1}".into(),
        reported: reported.into(),
        reported_at: at,
    };
    s.add_spam_reports(&[report("8:z", 20), report("8:y", 20)])
        .await
        .unwrap();
    s.add_spam_reports(&[report("8:x", 10)]).await.unwrap();
    s.add_spam_reports(&[]).await.unwrap();
    assert_eq!(
        s.spam_reports().await.unwrap(),
        [report("8:x", 10), report("8:z", 20), report("8:y", 20)]
    );
}

async fn thread_changes_track_joins_leaves_and_activity(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob", "carol"]).await;
    let (a, b, c) = (&n[0], &n[1], &n[2]);
    let id = "19:0123456789abcdef0123456789abcdef@thread.skype".to_string();
    let t = now_ms() + 1_000;
    let member = |acc: &AccountName, role: &str, joined_ms: i64| ThreadMember {
        account: acc.clone(),
        role: role.into(),
        joined_ms,
    };
    let activity = |text: &str, at: i64, who: &[&AccountName]| NewMessage {
        conversation: id.clone(),
        participants: who
            .iter()
            .map(|acc| Participant {
                account: (*acc).clone(),
                conversation_id: id.clone(),
            })
            .collect(),
        sender: "8:alice".into(),
        sender_epid: String::new(),
        recipient: id.clone(),
        client_message_id: None,
        message_type: "ThreadActivity/AddMember".into(),
        headers: String::new(),
        content: text.as_bytes().to_vec(),
        arrival_ms: at,
    };
    let text_in_thread = |from: &AccountName, text: &str, at: i64, who: &[&AccountName]| {
        let mut m = activity(text, at, who);
        m.sender = format!("8:{from}");
        m.message_type = "Text".into();
        m
    };
    assert_eq!(s.thread(&id).await.unwrap(), None);

    // Created with alice (admin) and bob.
    let created = ThreadRecord {
        id: id.clone(),
        creator: "8:alice".into(),
        topic: String::new(),
        version: t,
        members: vec![member(a, "admin", t), member(b, "user", t)],
    };
    let stored = s
        .apply_thread_change(ThreadChange {
            thread: created.clone(),
            joined: vec![a.clone(), b.clone()],
            left: vec![],
            activity: vec![activity("added bob", t, &[a, b])],
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message_id, t);
    assert_eq!(s.thread(&id).await.unwrap(), Some(created.clone()));
    s.store_message(text_in_thread(a, "before carol", t + 10, &[a, b]))
        .await
        .unwrap();

    // Carol joins, with a topic change: her history starts at her join.
    let mut with_carol = created.clone();
    with_carol.topic = "plans".into();
    with_carol.version = t + 20;
    with_carol.members.push(member(c, "user", t + 20));
    let stored = s
        .apply_thread_change(ThreadChange {
            thread: with_carol.clone(),
            joined: vec![c.clone()],
            left: vec![],
            activity: vec![activity("added carol", t + 20, &[a, b, c])],
        })
        .await
        .unwrap();
    assert_eq!(stored[0].message_id, t + 20);
    assert_eq!(s.thread(&id).await.unwrap(), Some(with_carol.clone()));
    assert_eq!(
        texts(&s.history(c, &id, 0, None, 10).await.unwrap()),
        ["added carol"]
    );
    assert_eq!(
        texts(&s.history(b, &id, 0, None, 10).await.unwrap()),
        ["added carol", "before carol", "added bob"]
    );
    let carol_row = s.conversation(c, &id).await.unwrap().unwrap();
    assert_eq!((carol_row.history_from, carol_row.left_at), (t + 20, None));

    // Bob leaves: his history ends with the message that removed him.
    let mut without_bob = with_carol.clone();
    without_bob.version = t + 30;
    without_bob.members.retain(|m| &m.account != b);
    let stored = s
        .apply_thread_change(ThreadChange {
            thread: without_bob.clone(),
            joined: vec![],
            left: vec![b.clone()],
            activity: vec![activity("removed bob", t + 30, &[a, b, c])],
        })
        .await
        .unwrap();
    let removed_at = stored[0].message_id;
    s.store_message(text_in_thread(a, "after bob", t + 40, &[a, c]))
        .await
        .unwrap();
    let members: Vec<String> = s
        .thread(&id)
        .await
        .unwrap()
        .unwrap()
        .members
        .iter()
        .map(|m| m.account.to_string())
        .collect();
    assert_eq!(members, ["alice", "carol"]);
    assert_eq!(
        texts(&s.history(b, &id, 0, None, 10).await.unwrap()),
        ["removed bob", "added carol", "before carol", "added bob"]
    );
    let bob_row = s.conversation(b, &id).await.unwrap().unwrap();
    assert_eq!(bob_row.left_at, Some(removed_at));
    assert_eq!(bob_row.last_message, None, "a left thread shows no message");
    assert_eq!(
        texts(&s.history(c, &id, 0, None, 10).await.unwrap()),
        ["after bob", "removed bob", "added carol"]
    );

    // Bob is added again: his history restarts at the new join and he is last in join order.
    let mut bob_back = without_bob.clone();
    bob_back.version = t + 50;
    bob_back.members.push(member(b, "user", t + 50));
    s.apply_thread_change(ThreadChange {
        thread: bob_back.clone(),
        joined: vec![b.clone()],
        left: vec![],
        activity: vec![activity("added bob again", t + 50, &[a, b, c])],
    })
    .await
    .unwrap();
    let order: Vec<String> = s
        .thread(&id)
        .await
        .unwrap()
        .unwrap()
        .members
        .iter()
        .map(|m| m.account.to_string())
        .collect();
    assert_eq!(order, ["alice", "carol", "bob"]);
    let bob_row = s.conversation(b, &id).await.unwrap().unwrap();
    assert_eq!((bob_row.history_from, bob_row.left_at), (t + 50, None));
    assert_eq!(
        texts(&s.history(b, &id, 0, None, 10).await.unwrap()),
        ["added bob again"]
    );

    // Everyone leaves: the thread is closed and no longer found.
    let mut closed = bob_back.clone();
    closed.version = t + 60;
    closed.members.clear();
    s.apply_thread_change(ThreadChange {
        thread: closed,
        joined: vec![],
        left: vec![a.clone(), b.clone(), c.clone()],
        activity: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.thread(&id).await.unwrap(), None);
    // Without an activity message, a leaver's history ends at the change's version.
    assert_eq!(
        s.conversation(a, &id).await.unwrap().unwrap().left_at,
        Some(t + 60)
    );
}

async fn secrets_are_created_once(s: Arc<dyn Storage>) {
    let first = s.get_or_create_secret("k", b"first").await.unwrap();
    assert_eq!(first, b"first");
    assert_eq!(
        s.get_or_create_secret("k", b"second").await.unwrap(),
        b"first"
    );
    assert_eq!(
        s.get_or_create_secret("other", &[0, 255]).await.unwrap(),
        [0, 255]
    );
    // Racing callers all get one value.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let s = s.clone();
        tasks.spawn(async move { s.get_or_create_secret("raced", &[i; 32]).await.unwrap() });
    }
    let mut values = BTreeSet::new();
    while let Some(v) = tasks.join_next().await {
        values.insert(v.unwrap());
    }
    assert_eq!(values.len(), 1);
}

async fn acks_are_recorded(s: Arc<dyn Storage>) {
    let n = accounts(s.as_ref(), &["alice"]).await;
    for message in [None, Some(("a|b".to_string(), 42))] {
        s.record_ack(AckRecord {
            account: n[0].clone(),
            epid: "{e1}".into(),
            ack_id: "7".into(),
            message,
            acked_ms: now_ms(),
        })
        .await
        .unwrap();
    }
}

/// Cluster nodes opening one database share its secrets, so they accept each other's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_share_the_token_key() {
    use msnp24_server::tokens::{Claims, TokenKind, TokenSigner};
    let url = common::fresh_postgres_db().await;
    // Both open (and migrate) at once, as nodes started together do.
    let (one, two) = tokio::join!(PostgresStorage::open(&url), PostgresStorage::open(&url));
    let (one, two) = (one.unwrap(), two.unwrap());
    let (k1, k2) = tokio::join!(TokenSigner::shared(&one), TokenSigner::shared(&two));
    let (k1, k2) = (k1.unwrap(), k2.unwrap());
    let claims = Claims {
        account: name("alice"),
        account_id: 1,
        generation: 1,
        expires_at: i64::MAX / 2,
        epid: None,
    };
    let token = k1.issue(TokenKind::Login, &claims);
    assert_eq!(k2.issue(TokenKind::Login, &claims), token);
    let stored = one
        .get_or_create_secret("token_key", &[0; 32])
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, [0; 32]);
    one.close().await;
    two.close().await;
}

/// On PostgreSQL the server's token key comes from the database, not the data directory: two
/// servers with different data directories accept each other's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_servers_with_separate_data_dirs_share_tokens() {
    let url = common::fresh_postgres_db().await;
    let one = common::TestServer::start_with(|c| c.storage = Some(url.clone())).await;
    let two = common::TestServer::start_with(|c| c.storage = Some(url.clone())).await;
    one.add_user("alice").await;
    let token = one.token("alice").await;
    assert!(!one.dir.path().join("secret.key").exists());
    let claims = two.server().state().tokens.verify(
        msnp24_server::tokens::TokenKind::Login,
        &token,
        msnp24_server::state::now_secs(),
    );
    assert!(claims.is_ok(), "{claims:?}");
}

/// PostgreSQL refuses a NUL character in text (SQLite stores it): such a message fails alone,
/// and the messages batched with it are stored all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_failing_message_does_not_fail_its_batch() {
    let b = postgres().await;
    let s = b.storage.clone();
    let n = accounts(s.as_ref(), &["alice", "bob"]).await;
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let mut m = direct(&n[0], &n[1], &format!("m{i}"), t);
        if i == 30 {
            m.sender_epid = "bad\0epid".into();
        }
        let s = s.clone();
        tasks.spawn(async move { (i, s.store_message(m).await) });
    }
    while let Some(r) = tasks.join_next().await {
        let (i, result) = r.unwrap();
        assert_eq!(result.is_err(), i == 30, "message {i}: {result:?}");
    }
    let key = conversation_key("8:alice", "8:bob");
    assert_eq!(s.conversation_messages(&key).await.unwrap().len(), 59);
    s.close().await;
    // After close, nothing more is accepted.
    assert!(s
        .store_message(direct(&n[0], &n[1], "late", t))
        .await
        .is_err());
}

async fn contact_names_resolve_in_one_batch(s: Arc<dyn Storage>) {
    let s = s.as_ref();
    let n = accounts(s, &["alice", "bob", "carol"]).await;
    s.update_contacts(&[update(&n[0], &n[1], FORWARD, 0)])
        .await
        .unwrap();
    // Two thousand names, most of them no account, answered in the order asked.
    let mut asked: Vec<AccountName> = (0..1998).map(|i| name(&format!("nobody{i}"))).collect();
    asked.insert(700, n[2].clone());
    asked.push(n[1].clone());
    let rel = s.contact_relations(&n[0], &asked).await.unwrap();
    let got: Vec<(&str, u32, u32)> = rel
        .iter()
        .map(|r| (r.name.as_str(), r.mine, r.theirs))
        .collect();
    assert_eq!(got, [("carol", 0, 0), ("bob", FORWARD, 0)]);
    assert!(s.contact_relations(&n[0], &[]).await.unwrap().is_empty());

    let profile = |email: &str| ProfileUpdate {
        email: Some(email.to_string()),
        display_name: None,
        mood: None,
    };
    assert!(s
        .update_profile(&n[1], &profile("bob@example.com"))
        .await
        .unwrap());
    assert!(s
        .update_profile(&n[2], &profile("carol@example.com"))
        .await
        .unwrap());
    let emails: Vec<String> = ["BOB@example.com", "nobody@example.com", "carol@EXAMPLE.com"]
        .iter()
        .map(|e| e.to_string())
        .collect();
    let mut found: Vec<String> = s
        .accounts_by_email(&emails)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.as_str().to_string())
        .collect();
    found.sort();
    assert_eq!(found, ["bob", "carol"]);
    assert!(s.accounts_by_email(&[]).await.unwrap().is_empty());
}
