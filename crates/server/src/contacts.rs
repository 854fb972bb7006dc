//! Contact lists (§4.1): the rules behind `PUT`/`DEL MSGR\CONTACTS` — requests, acceptance,
//! declining, blocking — and the presence consequences of each change.

use std::collections::BTreeMap;

use msnp24_proto::xml::contacts::{ContactEntry, ContactList};
use msnp24_proto::{AccountName, Frame, Payload};

use crate::routing::{DeliveryFilter, Outbound};
use crate::state::AppState;
use crate::storage::list_bits::{ALLOW, BLOCK, FORWARD, PENDING};
use crate::storage::{ContactUpdate, StorageResult};

/// Whether a list command sets or clears the bits it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOp {
    /// `PUT MSGR\CONTACTS`.
    Put,
    /// `DEL MSGR\CONTACTS`.
    Del,
}

/// Pending requests are announced in frames of at most this many names, well under what a client
/// itself sends in one command (~30 KB).
const REQUESTS_PER_FRAME: usize = 200;

/// Presence flows from `target` to `watcher` when the watcher forwards it, it allows the watcher,
/// and neither blocks the other (§4.1). Arguments are each side's bits for the other.
pub fn presence_flows(watcher_bits: u32, target_bits: u32) -> bool {
    watcher_bits & FORWARD != 0
        && target_bits & ALLOW != 0
        && (watcher_bits | target_bits) & BLOCK == 0
}

/// Applies one list command of `owner` to the named accounts (names that are not accounts, and the
/// owner itself, are ignored) and sends what follows from it: contact requests to their endpoints,
/// and presence (or its end) wherever who-sees-whom changed. Returns how many rows it touched.
pub async fn apply(
    state: &AppState,
    owner: &AccountName,
    op: ListOp,
    entries: Vec<(AccountName, u32)>,
) -> StorageResult<usize> {
    // A name listed twice in one command counts once, with the union of its bits.
    let mut wanted: BTreeMap<AccountName, u32> = BTreeMap::new();
    for (name, bits) in entries {
        if &name != owner {
            *wanted.entry(name).or_default() |= bits;
        }
    }
    let names: Vec<AccountName> = wanted.keys().cloned().collect();
    let relations = state.storage.contact_relations(owner, &names).await?;

    // For each relation: the update of the owner's row, then maybe one of the other's row.
    let mut updates = Vec::new();
    let mut plans = Vec::new();
    for rel in &relations {
        let bits = wanted.get(&rel.name).copied().unwrap_or(0);
        let (set, clear) = match op {
            // Pending is the server's to set. Allowing accepts a request; blocking declines it.
            ListOp::Put => {
                let set = bits & (FORWARD | ALLOW | BLOCK);
                (
                    set,
                    if set & (ALLOW | BLOCK) != 0 {
                        PENDING
                    } else {
                        0
                    },
                )
            }
            ListOp::Del => (0, bits),
        };
        let mine_after = (rel.mine | set) & !clear;
        let theirs_change = if set & FORWARD != 0
            && rel.mine & FORWARD == 0
            && mine_after & BLOCK == 0
            && rel.theirs & (ALLOW | BLOCK | PENDING) == 0
        {
            // Starting to watch someone who has not allowed us is a contact request. Only starting:
            // clients re-send their whole list at every sign-in, and a declined request stays
            // declined until the contact is removed and added again.
            Some((PENDING, 0))
        } else if mine_after & FORWARD == 0 && rel.theirs & PENDING != 0 {
            // No longer watching them withdraws our request.
            Some((0, PENDING))
        } else {
            None
        };
        updates.push(ContactUpdate {
            owner: owner.clone(),
            contact: rel.name.clone(),
            set,
            clear,
        });
        if let Some((set, clear)) = theirs_change {
            updates.push(ContactUpdate {
                owner: rel.name.clone(),
                contact: owner.clone(),
                set,
                clear,
            });
        }
        plans.push(theirs_change.is_some());
    }
    let results = state.storage.update_contacts(&updates).await?;

    let mut results = results.into_iter();
    for (rel, theirs_changed) in relations.iter().zip(plans) {
        let Some((mine_before, mine_after)) = results.next() else {
            break;
        };
        let (theirs_before, theirs_after) = if theirs_changed {
            results.next().unwrap_or((rel.theirs, rel.theirs))
        } else {
            (rel.theirs, rel.theirs)
        };
        if theirs_after & PENDING != 0 && theirs_before & PENDING == 0 {
            let frame = requests_frame(std::slice::from_ref(owner));
            let n = state
                .router
                .deliver(&rel.name, DeliveryFilter::default(), Outbound::Frame(frame))
                .await;
            tracing::debug!(from = %owner, to = %rel.name, endpoints = n, "contact request");
        }
        let owner_saw = presence_flows(mine_before, theirs_before);
        let owner_sees = presence_flows(mine_after, theirs_after);
        if owner_saw != owner_sees {
            state
                .presence
                .visibility_changed(&rel.name, owner, owner_sees)
                .await;
        }
        let they_saw = presence_flows(theirs_before, mine_before);
        let they_see = presence_flows(theirs_after, mine_after);
        if they_saw != they_see {
            state
                .presence
                .visibility_changed(owner, &rel.name, they_see)
                .await;
        }
    }
    Ok(relations.len())
}

/// `NFY 0 MSGR\CONTACTS` announcing requests from `from` (§4.1).
pub fn requests_frame(from: &[AccountName]) -> Frame {
    let ml = ContactList {
        list_bits: PENDING,
        contacts: from
            .iter()
            .map(|name| ContactEntry {
                name: name.as_str().to_owned(),
                network: 8,
                bits: PENDING,
                services: Vec::new(),
            })
            .collect(),
    };
    Frame::new(
        "NFY",
        0,
        "MSGR\\CONTACTS",
        Payload::body(ml.to_xml()).encode(),
    )
}

/// The requests `account` has not answered yet, as `NFY MSGR\CONTACTS` frames: an endpoint that was
/// offline when they were made learns of them when it subscribes to presence.
pub async fn open_requests(state: &AppState, account: &AccountName) -> StorageResult<Vec<Frame>> {
    let pending: Vec<AccountName> = state
        .storage
        .contacts(account)
        .await?
        .into_iter()
        .filter(|c| c.bits & PENDING != 0)
        .map(|c| c.name)
        .collect();
    Ok(pending
        .chunks(REQUESTS_PER_FRAME)
        .map(requests_frame)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_flow_rule() {
        assert!(presence_flows(FORWARD, ALLOW));
        assert!(presence_flows(FORWARD | ALLOW, ALLOW | PENDING));
        assert!(!presence_flows(ALLOW, ALLOW), "not watching");
        assert!(!presence_flows(FORWARD, FORWARD), "not allowed");
        assert!(!presence_flows(FORWARD | BLOCK, ALLOW), "watcher blocks");
        assert!(!presence_flows(FORWARD, ALLOW | BLOCK), "target blocks");
    }

    #[test]
    fn request_frame_is_the_reference_shape() {
        let f = requests_frame(&[AccountName::parse("alice").unwrap()]);
        assert_eq!(
            f.to_bytes(),
            b"NFY 0 MSGR\\CONTACTS 48\r\n\r\n<ml l=\"8\"><skp><c n=\"alice\" t=\"8\"/></skp></ml>"
        );
    }
}
