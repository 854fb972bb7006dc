//! Addresses (MRI, reference §3): `8:name`, `1:alias@example.com`, `19:<32 hex>@thread.skype`,
//! optionally followed by `;epid={…}`; account names and endpoint ids.

use std::fmt;

/// Why an address, name or epid was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MriError {
    /// Not `<number>:<id>`.
    #[error("malformed address")]
    Malformed,
    /// The epid is not an 8-4-4-4-12 hex layout.
    #[error("malformed epid")]
    BadEpid,
    /// The account name breaks the naming rules.
    #[error("invalid account name: {0}")]
    BadName(&'static str),
}

/// An endpoint id, normalised to lower case with braces: `{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epid(String);

impl Epid {
    /// Accepts an epid with or without braces, in any case (§2.3).
    pub fn parse(raw: &str) -> Result<Epid, MriError> {
        let raw = raw.trim();
        let inner = match raw.strip_prefix('{') {
            Some(rest) => rest.strip_suffix('}').ok_or(MriError::BadEpid)?,
            None => raw,
        };
        let groups: Vec<&str> = inner.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5
            || groups
                .iter()
                .zip(lens)
                .any(|(g, l)| g.len() != l || !g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(MriError::BadEpid);
        }
        Ok(Epid(format!("{{{}}}", inner.to_ascii_lowercase())))
    }

    /// The normalised form, braces included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated account (Skype) name, stored in lower case (§3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    /// 2–32 letters, digits, `.`, `-`, `_`, starting with a letter, optionally prefixed by `live:`;
    /// compared case-insensitively.
    pub fn parse(raw: &str) -> Result<AccountName, MriError> {
        let lower = raw.to_ascii_lowercase();
        let base = lower.strip_prefix("live:").unwrap_or(&lower);
        if base.len() < 2 || base.len() > 32 {
            return Err(MriError::BadName("must be 2 to 32 characters"));
        }
        if !base.as_bytes()[0].is_ascii_alphabetic() {
            return Err(MriError::BadName("must start with a letter"));
        }
        if !base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(MriError::BadName(
                "only letters, digits, '.', '-' and '_' are allowed",
            ));
        }
        Ok(AccountName(lower))
    }

    /// The name in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account's address, `8:<name>`.
    pub fn mri(&self) -> Mri {
        Mri {
            network: Network::Skype,
            id: self.0.clone(),
            epid: None,
        }
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The network an address names, by its numeric prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// `1:` — a Microsoft account (e-mail alias).
    Live,
    /// `8:` — a Skype name.
    Skype,
    /// `19:` — a group chat.
    Thread,
    /// Any other prefix (`2:`, `4:`, `28:`…): never sent to clients.
    Other(u16),
}

impl Network {
    /// The numeric prefix.
    pub fn prefix(self) -> u16 {
        match self {
            Network::Live => 1,
            Network::Skype => 8,
            Network::Thread => 19,
            Network::Other(n) => n,
        }
    }

    fn from_prefix(n: u16) -> Network {
        match n {
            1 => Network::Live,
            8 => Network::Skype,
            19 => Network::Thread,
            n => Network::Other(n),
        }
    }
}

/// A parsed address, with the endpoint it names if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mri {
    /// The prefix.
    pub network: Network,
    /// What follows the prefix (name, e-mail, thread id), as given.
    pub id: String,
    /// `;epid={…}`, if present.
    pub epid: Option<Epid>,
}

impl Mri {
    /// Parses `N:id` with an optional `;epid=` suffix; other `;key=value` parameters are dropped.
    pub fn parse(raw: &str) -> Result<Mri, MriError> {
        let raw = raw.trim();
        let (addr, params) = match raw.split_once(';') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let (prefix, id) = addr.split_once(':').ok_or(MriError::Malformed)?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MriError::Malformed);
        }
        let prefix: u16 = prefix.parse().map_err(|_| MriError::Malformed)?;
        if id.is_empty()
            || id.len() > 256
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(MriError::Malformed);
        }
        let mut epid = None;
        if let Some(params) = params {
            for param in params.split(';') {
                if let Some(value) = param.strip_prefix("epid=") {
                    epid = Some(Epid::parse(value)?);
                }
            }
        }
        Ok(Mri {
            network: Network::from_prefix(prefix),
            id: id.to_string(),
            epid,
        })
    }

    /// A `19:` address is a well-formed thread id: 32 lower-case hex digits then `@thread.skype`.
    pub fn is_valid_thread(&self) -> bool {
        self.network == Network::Thread
            && self.id.strip_suffix("@thread.skype").is_some_and(|h| {
                h.len() == 32
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    }

    /// The same address without its epid.
    pub fn without_epid(&self) -> Mri {
        Mri {
            epid: None,
            ..self.clone()
        }
    }

    /// The same address naming one endpoint.
    pub fn with_epid(&self, epid: Epid) -> Mri {
        Mri {
            epid: Some(epid),
            ..self.clone()
        }
    }
}

impl fmt::Display for Mri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.network.prefix(), self.id)?;
        if let Some(epid) = &self.epid {
            write!(f, ";epid={epid}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epid_normalised() {
        let a = Epid::parse("B958D334-651E-82FE-A2A1-3DFBB7F5CC08").unwrap();
        let b = Epid::parse("{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08}");
        for bad in [
            "",
            "{}",
            "b958d334",
            "{b958d334-651e-82fe-a2a1-3dfbb7f5cc0g}",
            "{b958d334-651e-82fe-a2a1-3dfbb7f5cc08",
        ] {
            assert!(Epid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_names() {
        assert_eq!(AccountName::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(
            AccountName::parse("live:Carol.X").unwrap().as_str(),
            "live:carol.x"
        );
        for bad in [
            "a",
            "1abc",
            "live:",
            "al ice",
            "alice!",
            &"a".repeat(33),
            "ali:ce",
        ] {
            assert!(AccountName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mri_round_trip() {
        let m = Mri::parse("8:alice;epid={B958D334-651E-82FE-A2A1-3DFBB7F5CC08}").unwrap();
        assert_eq!(m.network, Network::Skype);
        assert_eq!(
            m.to_string(),
            "8:alice;epid={b958d334-651e-82fe-a2a1-3dfbb7f5cc08}"
        );
        assert_eq!(m.without_epid().to_string(), "8:alice");
        let t = Mri::parse("19:0123456789abcdef0123456789abcdef@thread.skype").unwrap();
        assert!(t.is_valid_thread());
        assert!(!Mri::parse("19:nothex@thread.skype")
            .unwrap()
            .is_valid_thread());
        assert_eq!(Mri::parse("28:bot").unwrap().network, Network::Other(28));
        for bad in [
            "alice",
            ":alice",
            "8:",
            "x:alice",
            "8:al ice",
            "8:alice;epid=zz",
        ] {
            assert!(Mri::parse(bad).is_err(), "{bad}");
        }
    }
}
