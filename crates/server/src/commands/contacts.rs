//! `PUT MSGR\CONTACTS` and `DEL MSGR\CONTACTS` (§4.1): parse the `<ml>` body, let the contacts
//! domain apply it, acknowledge.

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

/// Resolves one `<c>` to an account name; `None` for names that cannot be an account here.
async fn resolve(s: &Session, name: &str, network: u32) -> Result<Option<AccountName>, Refusal> {
    match network {
        NETWORK_SKYPE => Ok(AccountName::parse(name).ok()),
        // `1:` names resolve through an account's e-mail alias; an alias no account has is
        // ignored like any other name that is not an account.
        NETWORK_MSA => Ok(s
            .state
            .storage
            .account_by_email(name)
            .await
            .map_err(internal)?
            .map(|a| a.name)),
        _ => Ok(None),
    }
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
    let ml = ContactList::parse(&payload.body).map_err(bad_xml)?;
    let listed = ml.contacts.len();
    let mut entries: Vec<(AccountName, u32)> = Vec::with_capacity(listed);
    for c in &ml.contacts {
        let bits = c.bits & list_bits::ALL;
        if bits == 0 {
            continue;
        }
        if let Some(name) = resolve(s, &c.name, c.network).await? {
            entries.push((name, bits));
        }
    }
    let applied = contacts::apply(&s.state, &owner, op, entries)
        .await
        .map_err(internal)?;
    tracing::debug!(conn = s.conn_id, ?op, listed, applied, "contact list");
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}
