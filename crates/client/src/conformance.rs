//! Checks a frame the server sent against the reference's §0 rules (what strict clients break on).
//! The client runs it on every frame it receives, so every test checks it for free.

use msnp24_proto::xml::contacts::ContactList;
use msnp24_proto::xml::presence_doc::UserDoc;
use msnp24_proto::xml::thread::{RoleUpdate, Thread};
use msnp24_proto::{FormattedMessage, Frame, Mri};

/// The error codes of §9; anything else is unknown to clients.
const ERROR_CODES: [&str; 9] = [
    "200", "201", "208", "240", "500", "603", "715", "803", "911",
];

fn upper_letters(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Returns what is wrong with `frame`, or `Ok` if a strict client would accept it.
pub fn check_frame(frame: &Frame) -> Result<(), String> {
    let cmd = frame.cmd.as_str();
    let cmd_ok = cmd.len() == 3
        && (cmd.bytes().all(|b| b.is_ascii_uppercase()) || cmd.bytes().all(|b| b.is_ascii_digit()));
    if !cmd_ok {
        return Err(format!(
            "command {cmd:?} is not three upper-case letters or digits"
        ));
    }
    let mut parts = frame.target.split('\\');
    let head = parts.next().unwrap_or("");
    let tail = parts.next();
    if parts.next().is_some() || !upper_letters(head) || tail.is_some_and(|t| !upper_letters(t)) {
        return Err(format!(
            "target {:?} is not upper-case letters with at most one backslash",
            frame.target
        ));
    }
    // §0.2: replies carry only the first part of the target.
    if frame.trid != 0 && tail.is_some() {
        return Err(format!(
            "reply {} {} names the full target",
            frame.cmd, frame.target
        ));
    }
    if cmd.bytes().all(|b| b.is_ascii_digit()) && !ERROR_CODES.contains(&cmd) {
        return Err(format!("error code {cmd} is not one of §9"));
    }
    check_payload(&frame.payload)?;
    match (cmd, frame.target.as_str()) {
        ("NFY", "MSGR\\PUT") => check_presence(frame)?,
        ("NFY", "MSGR\\DEL") => check_offline(frame)?,
        ("NFY", "MSGR\\CONTACTS") => {
            let body = frame
                .payload
                .strip_prefix(b"\r\n")
                .unwrap_or(&frame.payload);
            ContactList::parse(body).map_err(|e| format!("NFY MSGR\\CONTACTS body: {e}"))?;
        }
        ("NFY", "MSGR\\THREAD") => check_thread(frame)?,
        _ => {}
    }
    if frame.cmd == "SDG" {
        check_activity(frame)?;
    }
    if frame.cmd == "SDG" || frame.cmd == "NFY" {
        if let Ok((_, m)) = FormattedMessage::parse_payload(&frame.payload) {
            for addr in [m.to(), m.from()].into_iter().flatten() {
                if !(addr.starts_with("1:") || addr.starts_with("8:") || addr.starts_with("19:")) {
                    return Err(format!(
                        "address {addr:?} uses a prefix clients do not accept"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn is_thread(addr: Option<&str>) -> bool {
    addr.and_then(|a| Mri::parse(a).ok())
        .is_some_and(|m| m.epid.is_none() && m.is_valid_thread())
}

/// §7: the whole thread, with `<topic>` present and roles only `admin` or `user` (§0.6).
fn check_thread(frame: &Frame) -> Result<(), String> {
    let body = frame
        .payload
        .strip_prefix(b"\r\n")
        .unwrap_or(&frame.payload);
    let t = Thread::parse(body).map_err(|e| format!("NFY MSGR\\THREAD body: {e}"))?;
    if !is_thread(Some(&t.id)) {
        return Err(format!("NFY MSGR\\THREAD names {:?}, not a thread", t.id));
    }
    if t.version.is_none() || t.topic.is_none() || t.creator.is_none() {
        return Err("NFY MSGR\\THREAD lacks version, topic or creator".into());
    }
    for m in &t.members {
        if !matches!(m.role.as_deref(), Some("admin" | "user")) {
            return Err(format!("thread member role {:?}", m.role));
        }
    }
    Ok(())
}

/// §0.6: `ThreadActivity/*` comes from the thread, to the thread, and names only the two roles.
fn check_activity(frame: &Frame) -> Result<(), String> {
    let Ok((_, m)) = FormattedMessage::parse_payload(&frame.payload) else {
        return Ok(());
    };
    let Some(kind) = m.message_type() else {
        return Ok(());
    };
    if !kind.starts_with("ThreadActivity/") {
        return Ok(());
    }
    if !is_thread(m.from()) || m.from() != m.to() {
        return Err(format!(
            "{kind} from {:?} to {:?}: activity comes from the thread",
            m.from(),
            m.to()
        ));
    }
    if kind == "ThreadActivity/RoleUpdate" {
        let r = RoleUpdate::parse(&m.body).map_err(|e| format!("{kind} body: {e}"))?;
        if r.targets
            .iter()
            .any(|(_, role)| role != "admin" && role != "user")
        {
            return Err(format!("{kind} names a role other than admin or user"));
        }
    }
    Ok(())
}

/// §0.3: non-empty, starting with a header block ended by an empty line; names of letters and
/// hyphens, each followed by `: ` and a non-empty value.
pub fn check_payload(payload: &[u8]) -> Result<(), String> {
    if payload.is_empty() {
        return Err("zero-length payload".into());
    }
    if payload.starts_with(b"\r\n") {
        return Ok(());
    }
    let end = payload
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("payload does not start with a header block ended by an empty line")?;
    let block = std::str::from_utf8(&payload[..end]).map_err(|_| "header block is not UTF-8")?;
    for line in block.split("\r\n") {
        let (name, value) = line
            .split_once(": ")
            .ok_or_else(|| format!("header line {line:?} has no ': '"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            return Err(format!("header name {name:?} is not letters and hyphens"));
        }
        if value.is_empty() {
            return Err(format!("header {name} has an empty value"));
        }
    }
    Ok(())
}

/// The account an address names, without its endpoint.
fn account_of(addr: Option<&str>) -> Option<String> {
    addr.and_then(|a| Mri::parse(a).ok())
        .map(|m| m.without_epid().to_string().to_ascii_lowercase())
}

/// §0.5: exactly one `<Status>` of an allowed value, inside `<s n="IM">` of a `<user>` document,
/// at most one `<Mood>`, and `HDN` only to the account's own endpoints.
fn check_presence(frame: &Frame) -> Result<(), String> {
    let (_, m) = FormattedMessage::parse_payload(&frame.payload)
        .map_err(|e| format!("NFY MSGR\\PUT is not a formatted message: {e}"))?;
    let doc = UserDoc::parse(&m.body).map_err(|e| format!("NFY MSGR\\PUT body: {e}"))?;
    if doc.service("IM").and_then(|s| s.field("Status")).is_none() {
        return Err("presence has no <Status> in <s n=\"IM\">".into());
    }
    let body = String::from_utf8_lossy(&m.body);
    let statuses: Vec<&str> = body
        .split("<Status>")
        .skip(1)
        .filter_map(|s| s.split("</Status>").next())
        .collect();
    if statuses.len() != 1 {
        return Err(format!(
            "presence carries {} <Status> elements",
            statuses.len()
        ));
    }
    if !["NLN", "AWY", "BSY", "HDN"].contains(&statuses[0]) {
        return Err(format!("presence status {:?} is never sent", statuses[0]));
    }
    if body.matches("<Mood>").count() > 1 {
        return Err("presence carries several <Mood> elements".into());
    }
    if statuses[0] == "HDN" && account_of(m.to()) != account_of(m.from()) {
        return Err("HDN sent to another account".into());
    }
    Ok(())
}

/// §4.4: offline is `NFY MSGR\DEL` naming the account alone, with an empty `<user>` document.
fn check_offline(frame: &Frame) -> Result<(), String> {
    let (_, m) = FormattedMessage::parse_payload(&frame.payload)
        .map_err(|e| format!("NFY MSGR\\DEL is not a formatted message: {e}"))?;
    let from = m.from().and_then(|f| Mri::parse(f).ok());
    if from.as_ref().is_none_or(|f| f.epid.is_some()) {
        return Err(format!(
            "NFY MSGR\\DEL From {:?} is not an account alone",
            m.from()
        ));
    }
    let doc = UserDoc::parse(&m.body).map_err(|e| format!("NFY MSGR\\DEL body: {e}"))?;
    if !doc.is_empty() {
        return Err("NFY MSGR\\DEL carries a document".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_each_rule() {
        assert!(check_frame(&Frame::new("GET", 12, "MSGR", b"\r\n".to_vec())).is_ok());
        assert!(check_frame(&Frame::new(
            "GET",
            12,
            "MSGR\\RECENTCONVERSATIONS",
            b"\r\n".to_vec()
        ))
        .is_err());
        assert!(check_frame(&Frame::new(
            "NFY",
            0,
            "MSGR\\THREAD",
            b"\r\n<thread/>".to_vec()
        ))
        .is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", Vec::new())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"X1: y\r\n\r\n".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"X: \r\n\r\n".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"<xml/>".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "msgr", b"\r\n".to_vec())).is_err());
        assert!(check_frame(&Frame::new("404", 3, "MSGR", b"\r\nx".to_vec())).is_err());
        assert!(check_frame(&Frame::new("715", 3, "CON", b"\r\nx".to_vec())).is_ok());
    }

    fn nfy(target: &str, from: &str, to: &str, body: &str) -> Frame {
        let m = FormattedMessage::new(to, from, ("Notification", "1.0"), body.as_bytes().to_vec());
        Frame::new(
            "NFY",
            0,
            target,
            m.to_payload(&msnp24_proto::Headers::new()),
        )
    }

    #[test]
    fn presence_rules() {
        let e = "8:alice;epid={b958d334-651e-82fe-a2a1-3dfbb7f5cc08}";
        let one = "<user><s n=\"IM\"><Status>NLN</Status></s></user>";
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:bob", one)).is_ok());
        let two = "<user><s n=\"IM\"><Status>NLN</Status></s><sep n=\"IM\" epid=\"x\"><Status>BSY</Status></sep></user>";
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:bob", two)).is_err());
        let idle = one.replace("NLN", "IDL");
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:bob", &idle)).is_err());
        let hidden = one.replace("NLN", "HDN");
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:bob", &hidden)).is_err());
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:alice", &hidden)).is_ok());
        let elsewhere = "<user><s n=\"PE\"><Status>NLN</Status></s></user>";
        assert!(check_frame(&nfy("MSGR\\PUT", e, "8:bob", elsewhere)).is_err());
        assert!(check_frame(&nfy("MSGR\\DEL", "8:alice", "8:bob", "<user></user>")).is_ok());
        assert!(check_frame(&nfy("MSGR\\DEL", e, "8:bob", "<user></user>")).is_err());
        assert!(check_frame(&nfy("MSGR\\DEL", "8:alice", "8:bob", one)).is_err());
        assert!(check_frame(&nfy("MSGR\\PUT", e, "4:+123", one)).is_err());
        let ml = b"\r\n<ml l=\"8\"><skp><c n=\"alice\" t=\"8\"/></skp></ml>".to_vec();
        assert!(check_frame(&Frame::new("NFY", 0, "MSGR\\CONTACTS", ml)).is_ok());
        assert!(check_frame(&Frame::new(
            "NFY",
            0,
            "MSGR\\CONTACTS",
            b"\r\n<x/>".to_vec()
        ))
        .is_err());
    }

    #[test]
    fn thread_rules() {
        let t = "19:0123456789abcdef0123456789abcdef@thread.skype";
        let full = format!("\r\n<thread><id>{t}</id><version>1</version><capabilities>2047</capabilities><properties><topic></topic><creator>8:alice</creator></properties><members><member><mri>8:alice</mri><role>admin</role></member></members></thread>");
        assert!(check_frame(&Frame::new(
            "NFY",
            0,
            "MSGR\\THREAD",
            full.clone().into_bytes()
        ))
        .is_ok());
        let owner = full.replace("<role>admin</role>", "<role>owner</role>");
        assert!(check_frame(&Frame::new("NFY", 0, "MSGR\\THREAD", owner.into_bytes())).is_err());
        let no_topic = full.replace("<topic></topic>", "");
        assert!(check_frame(&Frame::new("NFY", 0, "MSGR\\THREAD", no_topic.into_bytes())).is_err());
        let sdg = |from: &str, kind: &str, body: &str| {
            let mut m =
                FormattedMessage::new(t, from, ("Messaging", "2.0"), body.as_bytes().to_vec());
            m.content.push("Message-Type", kind);
            Frame::new(
                "SDG",
                0,
                "MSGR",
                m.to_payload(&msnp24_proto::Headers::new()),
            )
        };
        let add = "<addmember><eventtime>1</eventtime><initiator>8:alice</initiator><target>8:bob</target></addmember>";
        assert!(check_frame(&sdg(t, "ThreadActivity/AddMember", add)).is_ok());
        assert!(check_frame(&sdg("8:alice", "ThreadActivity/AddMember", add)).is_err());
        assert!(check_frame(&sdg("8:alice", "Text", "hi")).is_ok());
        let role = "<roleupdate><eventtime>1</eventtime><initiator>8:alice</initiator><target><id>8:bob</id><role>owner</role></target></roleupdate>";
        assert!(check_frame(&sdg(t, "ThreadActivity/RoleUpdate", role)).is_err());
    }
}
