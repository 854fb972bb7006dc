//! Group chat rules (§7), apart from the wire: who may add, remove, change roles and the topic,
//! what a change does to the member list, and which `ThreadActivity/*` messages record it.
//! The handlers in `commands/threads.rs` parse, call these, store and route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use msnp24_proto::xml::thread::{AddMember, DeleteMember, Member, RoleUpdate, Thread, TopicUpdate};
use msnp24_proto::AccountName;

use crate::cluster::{SharedGuard, SharedLocks};
use crate::storage::{ThreadMember, ThreadRecord};

/// `<capabilities>` of every thread (the value real servers sent).
pub const CAPABILITIES: u32 = 2047;
/// Most members one thread may have.
pub const MAX_MEMBERS: usize = 2000;
/// Longest topic kept, in bytes.
pub const MAX_TOPIC: usize = 1024;
/// The admin role.
pub const ADMIN: &str = "admin";
/// The ordinary member role.
pub const USER: &str = "user";

/// The role a request names, if it is one of the two that exist (any case).
pub fn parse_role(raw: &str) -> Option<&'static str> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case(ADMIN) {
        Some(ADMIN)
    } else if raw.eq_ignore_ascii_case(USER) {
        Some(USER)
    } else {
        None
    }
}

/// Why a request breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// The caller is not a member, or not an admin where one is needed (208).
    Forbidden(&'static str),
    /// The request asks for something that cannot be (201).
    Invalid(&'static str),
}

/// What one request does to a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The thread after the change.
    pub thread: ThreadRecord,
    /// Who made it.
    pub initiator: AccountName,
    /// Members added, in order.
    pub added: Vec<AccountName>,
    /// Members removed, in order.
    pub removed: Vec<AccountName>,
    /// Role changes (the promotion that keeps an admin included), in order.
    pub roles: Vec<(AccountName, &'static str)>,
    /// The new topic, when it changed.
    pub topic: Option<String>,
}

impl Plan {
    fn new(thread: ThreadRecord, initiator: &AccountName) -> Plan {
        Plan {
            thread,
            initiator: initiator.clone(),
            added: Vec::new(),
            removed: Vec::new(),
            roles: Vec::new(),
            topic: None,
        }
    }

    /// Whether nothing changes (the request is acknowledged and nothing is sent).
    pub fn is_noop(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.roles.is_empty()
            && self.topic.is_none()
    }

    /// Every account that hears of the change: the members after it and those it removed.
    pub fn audience(&self) -> Vec<AccountName> {
        let mut out: Vec<AccountName> = self
            .thread
            .members
            .iter()
            .map(|m| m.account.clone())
            .collect();
        out.extend(self.removed.iter().cloned());
        out
    }

    /// The activity messages recording the change, in order: `(Message-Type, body, whose
    /// history and screens it reaches)`. Removed members get their `DeleteMember` and nothing after.
    pub fn activity(&self) -> Vec<(&'static str, String, Vec<AccountName>)> {
        let time = u64::try_from(self.thread.version).unwrap_or(0);
        let initiator = self.initiator.mri().to_string();
        let members: Vec<AccountName> = self
            .thread
            .members
            .iter()
            .map(|m| m.account.clone())
            .collect();
        let mris = |names: &[AccountName]| names.iter().map(|n| n.mri().to_string()).collect();
        let mut out = Vec::new();
        if !self.added.is_empty() {
            let body = AddMember {
                event_time: time,
                initiator: initiator.clone(),
                targets: mris(&self.added),
            };
            out.push(("ThreadActivity/AddMember", body.to_xml(), members.clone()));
        }
        if !self.removed.is_empty() {
            let body = DeleteMember {
                event_time: time,
                initiator: initiator.clone(),
                targets: mris(&self.removed),
            };
            out.push((
                "ThreadActivity/DeleteMember",
                body.to_xml(),
                self.audience(),
            ));
        }
        if !self.roles.is_empty() && !members.is_empty() {
            let body = RoleUpdate {
                event_time: time,
                initiator: initiator.clone(),
                targets: self
                    .roles
                    .iter()
                    .map(|(n, r)| (n.mri().to_string(), r.to_string()))
                    .collect(),
            };
            out.push(("ThreadActivity/RoleUpdate", body.to_xml(), members.clone()));
        }
        if let Some(topic) = &self.topic {
            let body = TopicUpdate {
                event_time: time,
                initiator,
                value: topic.clone(),
            };
            out.push(("ThreadActivity/TopicUpdate", body.to_xml(), members));
        }
        out
    }
}

fn role_of<'a>(t: &'a ThreadRecord, who: &AccountName) -> Option<&'a str> {
    t.members
        .iter()
        .find(|m| &m.account == who)
        .map(|m| m.role.as_str())
}

/// The next version: the time of the change, kept strictly increasing.
fn next_version(t: &ThreadRecord, now_ms: i64) -> i64 {
    now_ms.max(t.version.saturating_add(1))
}

/// A thread always has an admin while it has members: the longest-standing member is promoted
/// (an admin who demoted itself, being the longest-standing, simply stays admin).
fn keep_an_admin(plan: &mut Plan, before: &ThreadRecord) {
    let t = &mut plan.thread;
    if t.members.iter().any(|m| m.role == ADMIN) {
        return;
    }
    if let Some(first) = t.members.first_mut() {
        first.role = ADMIN.to_string();
        let who = first.account.clone();
        plan.roles.retain(|(n, _)| n != &who);
        if role_of(before, &who) != Some(ADMIN) {
            plan.roles.push((who, ADMIN));
        }
    }
}

/// A new, empty thread created by `creator`.
pub fn new_thread(id: String, creator: &AccountName) -> ThreadRecord {
    ThreadRecord {
        id,
        creator: creator.mri().to_string(),
        topic: String::new(),
        version: 0,
        members: Vec::new(),
    }
}

/// `PUT MSGR\THREAD`: creates (when `create`; `current` is then [`new_thread`]) or changes a
/// thread. `listed` are the existing accounts of `<members>` with their role, if any.
pub fn plan_put(
    current: &ThreadRecord,
    create: bool,
    actor: &AccountName,
    listed: &[(AccountName, Option<&'static str>)],
    topic: Option<&str>,
    now_ms: i64,
) -> Result<Plan, RuleError> {
    let mut plan = Plan::new(current.clone(), actor);
    plan.thread.version = next_version(current, now_ms);
    let joined_ms = plan.thread.version;
    if create {
        // The creator is admin, whatever it listed (§7).
        plan.thread.members.push(ThreadMember {
            account: actor.clone(),
            role: ADMIN.to_string(),
            joined_ms,
        });
        plan.added.push(actor.clone());
    }
    let is_admin = match role_of(&plan.thread, actor) {
        Some(role) => role == ADMIN,
        None => return Err(RuleError::Forbidden("not a member of this thread")),
    };
    for (who, role) in listed {
        if create && who == actor {
            continue;
        }
        let t = &mut plan.thread;
        match t.members.iter_mut().find(|m| &m.account == who) {
            // Clients re-list members as they are; only a real change needs an admin.
            Some(m) => match role {
                Some(role) if m.role != *role => {
                    if !is_admin {
                        return Err(RuleError::Forbidden("only admins change roles"));
                    }
                    m.role = role.to_string();
                    plan.roles.retain(|(n, _)| n != who);
                    if !plan.added.contains(who) {
                        plan.roles.push((who.clone(), role));
                    }
                }
                _ => {}
            },
            // Any member adds others as `user` (§7: Skype 7 offers "add people" to everyone and
            // sends it unchecked); making someone an admin stays with admins.
            None => {
                if !is_admin && *role == Some(ADMIN) {
                    return Err(RuleError::Forbidden("only admins add admins"));
                }
                if t.members.len() >= MAX_MEMBERS {
                    return Err(RuleError::Invalid("too many members"));
                }
                t.members.push(ThreadMember {
                    account: who.clone(),
                    role: role.unwrap_or(USER).to_string(),
                    joined_ms,
                });
                plan.added.push(who.clone());
            }
        }
    }
    if let Some(topic) = topic {
        if topic.len() > MAX_TOPIC {
            return Err(RuleError::Invalid("topic too long"));
        }
        if topic != plan.thread.topic {
            plan.thread.topic = topic.to_string();
            plan.topic = Some(topic.to_string());
        }
    }
    keep_an_admin(&mut plan, current);
    Ok(plan)
}

/// `DEL MSGR\THREAD`: removes `targets` (existing accounts); a member may remove itself.
pub fn plan_del(
    current: &ThreadRecord,
    actor: &AccountName,
    targets: &[AccountName],
    now_ms: i64,
) -> Result<Plan, RuleError> {
    let mut plan = Plan::new(current.clone(), actor);
    let Some(role) = role_of(current, actor) else {
        // Leaving twice is a harmless retry: acknowledged, nothing happens.
        if targets.iter().all(|t| t == actor) {
            return Ok(plan);
        }
        return Err(RuleError::Forbidden("not a member of this thread"));
    };
    let is_admin = role == ADMIN;
    for who in targets {
        if who != actor && !is_admin {
            return Err(RuleError::Forbidden("only admins remove others"));
        }
        let t = &mut plan.thread;
        if let Some(i) = t.members.iter().position(|m| &m.account == who) {
            t.members.remove(i);
            plan.removed.push(who.clone());
        }
    }
    if !plan.removed.is_empty() {
        plan.thread.version = next_version(current, now_ms);
    }
    keep_an_admin(&mut plan, current);
    Ok(plan)
}

/// The full `<thread>` of `NFY MSGR\THREAD` and `GET MSGR\THREADS`.
pub fn thread_xml(t: &ThreadRecord) -> Thread {
    Thread {
        id: t.id.clone(),
        version: u64::try_from(t.version).ok(),
        capabilities: Some(CAPABILITIES),
        topic: Some(t.topic.clone()),
        creator: Some(t.creator.clone()),
        members: t
            .members
            .iter()
            .map(|m| Member {
                mri: m.account.mri().to_string(),
                role: Some(m.role.clone()),
            })
            .collect(),
    }
}

/// A new thread id: `19:` and 32 random lower-case hex digits `@thread.skype`.
pub fn new_thread_id() -> String {
    format!("19:{}@thread.skype", uuid::Uuid::new_v4().simple())
}

/// One lock per thread, held from reading the members to handing the last frame to the router,
/// so every member sees a thread's changes and messages in the same order, and nothing reaches
/// a member after the frame that removed it. In a cluster the lock is also taken cluster-wide.
#[derive(Default)]
pub struct ThreadLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    shared: Option<Arc<dyn SharedLocks>>,
}

impl ThreadLocks {
    /// Locks in this process, and across the cluster when `shared` is given.
    pub fn new(shared: Option<Arc<dyn SharedLocks>>) -> ThreadLocks {
        ThreadLocks {
            locks: Mutex::default(),
            shared,
        }
    }

    /// Waits for the thread's turn.
    pub async fn lock(&self, id: &str) -> ThreadGuard<'_> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        // Waiters of this node queue in memory; only the one holding the local lock asks Redis.
        let guard = lock.clone().lock_owned().await;
        let shared = match &self.shared {
            Some(s) => Some(s.acquire(&format!("thread:{id}")).await),
            None => None,
        };
        ThreadGuard {
            locks: self,
            id: id.to_string(),
            lock,
            _shared: shared,
            _guard: Some(guard),
        }
    }
}

/// Held while one thread is changed or written to.
pub struct ThreadGuard<'a> {
    locks: &'a ThreadLocks,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _shared: Option<SharedGuard>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for ThreadGuard<'_> {
    fn drop(&mut self) {
        self._shared.take();
        self._guard.take();
        let mut map = self.locks.locks.lock().unwrap_or_else(|p| p.into_inner());
        // The map keeps only threads someone is waiting for: ours and the map's references.
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> AccountName {
        AccountName::parse(s).unwrap()
    }

    fn created(members: &[(&str, Option<&'static str>)]) -> ThreadRecord {
        let listed: Vec<_> = members.iter().map(|(m, r)| (n(m), *r)).collect();
        let t = new_thread(new_thread_id(), &n("alice"));
        plan_put(&t, true, &n("alice"), &listed, None, 10)
            .unwrap()
            .thread
    }

    #[test]
    fn creator_is_admin_and_roles_are_two() {
        let t = created(&[("alice", Some(USER)), ("bob", None)]);
        let roles: Vec<_> = t.members.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, [ADMIN, USER]);
        assert_eq!(parse_role("Admin"), Some(ADMIN));
        assert_eq!(parse_role("owner"), None);
        assert!(new_thread_id().len() == 3 + 32 + 13);
    }

    #[test]
    fn members_add_users_only_admins_add_admins_remove_and_change_roles() {
        let t = created(&[("bob", None)]);
        let bob = n("bob");
        let carol = n("carol");
        for role in [None, Some(USER)] {
            let p = plan_put(&t, false, &bob, &[(carol.clone(), role)], None, 20).unwrap();
            assert_eq!(p.added, std::slice::from_ref(&carol));
            assert_eq!(p.thread.members[2].role, USER);
            assert!(p.roles.is_empty());
            assert_eq!(p.initiator, bob);
        }
        assert_eq!(
            plan_put(&t, false, &bob, &[(carol.clone(), Some(ADMIN))], None, 20),
            Err(RuleError::Forbidden("only admins add admins"))
        );
        let with_carol = plan_put(&t, false, &bob, &[(carol.clone(), None)], None, 20)
            .unwrap()
            .thread;
        assert!(matches!(
            plan_put(
                &with_carol,
                false,
                &bob,
                &[(carol.clone(), Some(ADMIN))],
                None,
                30
            ),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            plan_del(&with_carol, &bob, std::slice::from_ref(&carol), 30),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            plan_put(&t, false, &bob, &[(bob.clone(), Some(ADMIN))], None, 20),
            Err(RuleError::Forbidden(_))
        ));
        assert!(matches!(
            plan_del(&t, &bob, &[n("alice")], 20),
            Err(RuleError::Forbidden(_))
        ));
        // Re-listing oneself unchanged and the topic are anyone's.
        let p = plan_put(&t, false, &bob, &[(bob.clone(), Some(USER))], Some("x"), 20).unwrap();
        assert_eq!(p.topic.as_deref(), Some("x"));
        assert!(p.roles.is_empty() && p.added.is_empty());
        assert!(matches!(
            plan_put(&t, false, &carol, &[], Some("x"), 20),
            Err(RuleError::Forbidden(_))
        ));
        // The only admin demoting itself stays admin: nothing changes.
        let p = plan_put(
            &t,
            false,
            &n("alice"),
            &[(n("alice"), Some(USER))],
            None,
            20,
        )
        .unwrap();
        assert!(p.is_noop());
    }

    #[test]
    fn last_admin_leaving_promotes_the_longest_standing() {
        let t = created(&[("bob", None)]);
        let p = plan_put(&t, false, &n("alice"), &[(n("carol"), None)], None, 20).unwrap();
        let p = plan_del(&p.thread, &n("alice"), &[n("alice")], 30).unwrap();
        assert_eq!(p.removed, [n("alice")]);
        assert_eq!(p.roles, [(n("bob"), ADMIN)]);
        let kinds: Vec<_> = p.activity().iter().map(|a| a.0).collect();
        assert_eq!(
            kinds,
            ["ThreadActivity/DeleteMember", "ThreadActivity/RoleUpdate"]
        );
        // The leaver hears of its own removal, not of what follows.
        assert!(p.activity()[0].2.contains(&n("alice")));
        assert!(!p.activity()[1].2.contains(&n("alice")));
        // Leaving again is a harmless no-op; the last one out closes the thread.
        assert!(plan_del(&p.thread, &n("alice"), &[n("alice")], 40)
            .unwrap()
            .is_noop());
        let p = plan_del(&p.thread, &n("bob"), &[n("bob"), n("carol")], 40).unwrap();
        assert!(p.thread.members.is_empty());
        assert_eq!(p.removed, [n("bob"), n("carol")]);
    }
}
