//! Checks a frame the server sent against the reference's §0 rules (what strict clients break on).
//! The client runs it on every frame it receives, so every test checks it for free.

use msnp24_proto::{FormattedMessage, Frame};

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
    check_payload(&frame.payload)?;
    if frame.cmd == "NFY" && frame.target == "MSGR\\PUT" {
        check_presence(frame)?;
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

/// §0.5: exactly one `<Status>` of an allowed value and at most one `<Mood>`.
fn check_presence(frame: &Frame) -> Result<(), String> {
    let (_, m) = FormattedMessage::parse_payload(&frame.payload)
        .map_err(|e| format!("NFY MSGR\\PUT is not a formatted message: {e}"))?;
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
        .is_ok());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", Vec::new())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"X1: y\r\n\r\n".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"X: \r\n\r\n".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "MSGR", b"<xml/>".to_vec())).is_err());
        assert!(check_frame(&Frame::new("PUT", 3, "msgr", b"\r\n".to_vec())).is_err());
    }
}
