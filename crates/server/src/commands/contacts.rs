//! `PUT MSGR\CONTACTS` and `DEL MSGR\CONTACTS` (§4.1): parse the `<ml>` body, let the contacts
//! domain apply it, acknowledge.

use std::collections::HashMap;

use msnp24_proto::xml::contacts::ContactList;
use msnp24_proto::{AccountName, ErrorCode, Frame, Payload};

use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::contacts::{self, ListOp};
use crate::session::Session;
use crate::storage::list_bits;

/// Network number of Skype names in `c@t`.
const NETWORK_SKYPE: u32 = 8;
/// Network number of Microsoft accounts in `c@t`.
const NETWORK_MSA: u32 = 1;

/// Most names one command may list: a real client splits its list into commands of ~30 KB,
/// which even with the shortest entries is well under this.
pub const MAX_LISTED: usize = 2000;

/// Resolves the listed names to accounts with their bits, in one storage call for the `t="1"`
/// e-mail aliases; names that cannot be an account here (or no account has as alias) are left out.
async fn resolve(s: &Session, ml: &ContactList) -> Result<Vec<(AccountName, u32)>, Refusal> {
    let listed = ml.contacts.iter().filter(|c| c.bits & list_bits::ALL != 0);
    let emails: Vec<String> = listed
        .clone()
        .filter(|c| c.network == NETWORK_MSA)
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    let by_email: HashMap<String, AccountName> = s
        .state
        .storage
        .accounts_by_email(&emails)
        .await
        .map_err(internal)?
        .into_iter()
        .filter_map(|a| Some((a.email?, a.name)))
        .collect();
    Ok(listed
        .filter_map(|c| {
            let name = match c.network {
                NETWORK_SKYPE => AccountName::parse(&c.name).ok(),
                NETWORK_MSA => by_email.get(&c.name.to_ascii_lowercase()).cloned(),
                _ => None,
            }?;
            Some((name, c.bits & list_bits::ALL))
        })
        .collect())
}

/// Handles `PUT` (`op` = Put) and `DEL` (`op` = Del) of `MSGR\CONTACTS`.
pub async fn change(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
    op: ListOp,
) -> Outcome {
    let Some(owner) = s.bound().map(|b| b.account.clone()) else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    super::charge_write(s)?;
    let ml = ContactList::parse(&payload.body).map_err(bad_xml)?;
    let listed = ml.contacts.len();
    if listed > MAX_LISTED {
        return Err(Refusal::new(
            ErrorCode::InvalidParameter,
            format!("more than {MAX_LISTED} names in one command"),
        ));
    }
    let entries = resolve(s, &ml).await?;
    let applied = contacts::apply(&s.state, &owner, op, entries)
        .await
        .map_err(internal)?;
    tracing::debug!(conn = s.conn_id, ?op, listed, applied, "contact list");
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}
