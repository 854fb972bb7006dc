//! The small commands of §8 that only store what they are told: `PUT MSGR\PARTNERS`,
//! `PUT MSGR\OPTIONS`, `PUT MSGR\NETWORKS` and `PUT MSGR\REPORTSPAM`.

use msnp24_proto::xml::misc::{Networks, Options, Partners, ReportSpam};
use msnp24_proto::{ErrorCode, Frame, Payload};

use super::{bad_xml, internal, Flow, Outcome, Refusal};
use crate::session::Session;
use crate::state::now_secs;
use crate::storage::{Setting, SettingScope, SpamReport};

/// Largest stored setting (canonical XML); real bodies are a few dozen bytes.
pub const MAX_SETTING_BYTES: usize = 4096;
/// Most aliases one `REPORTSPAM` may name; a real client reports one contact at a time.
pub const MAX_REPORTED_ALIASES: usize = 50;
/// Longest reported alias kept.
pub const MAX_ALIAS_BYTES: usize = 256;

async fn store_setting(
    s: &mut Session,
    frame: &Frame,
    kind: &str,
    per_endpoint: bool,
    value: String,
    out: &mut Vec<Frame>,
) -> Outcome {
    let Some(bound) = s.bound().cloned() else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    super::charge_write(s)?;
    if value.len() > MAX_SETTING_BYTES {
        return Err(Refusal::new(
            ErrorCode::InvalidParameter,
            format!("{kind} body larger than {MAX_SETTING_BYTES} bytes"),
        ));
    }
    let scope = if per_endpoint {
        SettingScope::Endpoint(bound.epid.to_string())
    } else {
        SettingScope::Account
    };
    s.state
        .storage
        .put_setting(Setting {
            account: bound.account.mri().to_string(),
            scope,
            kind: kind.to_string(),
            value,
            updated_at: now_secs(),
        })
        .await
        .map_err(internal)?;
    tracing::debug!(conn = s.conn_id, kind, "setting stored");
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}

/// `PUT MSGR\PARTNERS`: stored per endpoint, no effect (§8).
pub async fn partners(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let body = Partners::parse(&payload.body).map_err(bad_xml)?;
    store_setting(s, frame, "partners", true, body.to_xml(), out).await
}

/// `PUT MSGR\OPTIONS`: stored per endpoint, shown by the admin CLI (§8).
pub async fn options(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let body = Options::parse(&payload.body).map_err(bad_xml)?;
    // Element names come from the client and are written back as XML names: keep only names that
    // are plain identifiers, so the stored document always parses again.
    if let Some((bad, _)) = body.fields.iter().find(|(k, _)| !plain_name(k)) {
        return Err(Refusal::new(
            ErrorCode::Syntax,
            format!("option name {:?} is not a plain XML name", truncate(bad)),
        ));
    }
    store_setting(s, frame, "options", true, body.to_xml(), out).await
}

/// `PUT MSGR\NETWORKS`: stored for the account; no other network exists, so no effect (§8).
pub async fn networks(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let body = Networks::parse(&payload.body).map_err(bad_xml)?;
    store_setting(s, frame, "networks", false, body.to_xml(), out).await
}

/// `PUT MSGR\REPORTSPAM`: one stored report per alias, with time and reporter (§8).
pub async fn report_spam(
    s: &mut Session,
    frame: &Frame,
    payload: &Payload,
    out: &mut Vec<Frame>,
) -> Outcome {
    let Some(bound) = s.bound().cloned() else {
        return Err(Refusal::new(ErrorCode::AuthFailed, "not bound"));
    };
    super::charge_write(s)?;
    let body = ReportSpam::parse(&payload.body).map_err(bad_xml)?;
    if body.aliases.len() > MAX_REPORTED_ALIASES {
        return Err(Refusal::new(
            ErrorCode::InvalidParameter,
            format!("more than {MAX_REPORTED_ALIASES} aliases in one report"),
        ));
    }
    if body.aliases.iter().any(|a| a.len() > MAX_ALIAS_BYTES) {
        return Err(Refusal::new(
            ErrorCode::InvalidParameter,
            format!("alias longer than {MAX_ALIAS_BYTES} bytes"),
        ));
    }
    let now = now_secs();
    let reports: Vec<SpamReport> = body
        .aliases
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|alias| SpamReport {
            reporter: bound.account.mri().to_string(),
            reporter_epid: bound.epid.to_string(),
            reported: alias.to_string(),
            reported_at: now,
        })
        .collect();
    s.state
        .storage
        .add_spam_reports(&reports)
        .await
        .map_err(internal)?;
    for r in &reports {
        tracing::warn!(conn = s.conn_id, reporter = %r.reporter, reported = %crate::text::log(&r.reported), "spam report");
    }
    out.push(s.reply(frame, Vec::new(), false));
    Ok(Flow::Continue)
}

fn plain_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}
