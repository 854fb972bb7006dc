//! Tokens the server signs itself: login tokens (what a client puts in `ATH`) and registration
//! tokens (`Set-Registration`). HMAC-SHA256 with a secret kept in the data directory, so tokens stay
//! valid across restarts and no database lookup is needed to check a signature.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use msnp24_proto::{AccountName, Epid};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Name of the token key among the secrets storage keeps.
const SHARED_KEY_NAME: &str = "token_key";

/// What a token is for; a token of one kind is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Issued by `POST /login`; accepted by `ATH`.
    Login,
    /// Issued in `Set-Registration`; names one endpoint.
    Registration,
    /// An OAuth refresh token from the compatibility login (§10).
    Refresh,
    /// A skypetoken for the profile and contacts services (§10).
    Skype,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            TokenKind::Login => "L",
            TokenKind::Registration => "R",
            TokenKind::Refresh => "F",
            TokenKind::Skype => "S",
        }
    }
}

/// The verified contents of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The account it names.
    pub account: AccountName,
    /// The account's database id, which is never given to another account, so a token of a
    /// removed account never works for a new one of the same name (0 in registration tokens,
    /// which only ever name the connection's own account).
    pub account_id: i64,
    /// The account generation it was issued under.
    pub generation: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// For registration tokens, the endpoint.
    pub epid: Option<Epid>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of our format, or the signature does not match.
    #[error("malformed or forged token")]
    Invalid,
    /// Past its expiry.
    #[error("expired token")]
    Expired,
}

/// Signs and checks tokens with the server secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    /// Loads the secret from `dir/secret.key`, creating it (mode 0600) on first run.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<TokenSigner> {
        let path = dir.join("secret.key");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!("{} is not a 32-byte secret; remove it to make a new one (this invalidates every token)", path.display())
                })?;
                Ok(TokenSigner { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(&path, &key)?;
                tracing::info!(path = %path.display(), "created a new token secret");
                Ok(TokenSigner { key })
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Loads the secret from storage, storing a new one on first run: nodes sharing a database
    /// then accept each other's tokens.
    pub async fn shared(storage: &dyn crate::storage::Storage) -> anyhow::Result<TokenSigner> {
        let mut candidate = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut candidate);
        let stored = storage
            .get_or_create_secret(SHARED_KEY_NAME, &candidate)
            .await
            .map_err(|e| anyhow::anyhow!("loading the token secret from storage: {e}"))?;
        let key: [u8; 32] = stored.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "the stored secret {SHARED_KEY_NAME:?} is not 32 bytes; delete it to make a new one (this invalidates every token)"
            )
        })?;
        Ok(TokenSigner { key })
    }

    /// A signer with a given key (tests, tools).
    pub fn from_key(key: [u8; 32]) -> TokenSigner {
        TokenSigner { key }
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(body);
        mac
    }

    /// A short keyed digest of `data` (base64url), for values the server hands out and must
    /// recognise later without storing them.
    pub fn tag(&self, purpose: &str, data: &[u8]) -> String {
        let mut mac = self.mac(purpose.as_bytes());
        mac.update(b"|");
        mac.update(data);
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..18])
    }

    /// Issues a token of `kind`.
    pub fn issue(&self, kind: TokenKind, claims: &Claims) -> String {
        let epid = claims.epid.as_ref().map(Epid::as_str).unwrap_or("");
        let body = format!(
            "{}|{}|{}|{}|{}|{}",
            kind.tag(),
            claims.account,
            claims.account_id,
            claims.generation,
            claims.expires_at,
            epid
        );
        let tag = self.mac(body.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks signature, kind and expiry (`now` in unix seconds).
    pub fn verify(&self, kind: TokenKind, token: &str, now: i64) -> Result<Claims, TokenError> {
        let (body_b64, tag_b64) = token.trim().split_once('.').ok_or(TokenError::Invalid)?;
        if token.len() > 1024 {
            return Err(TokenError::Invalid);
        }
        let body = URL_SAFE_NO_PAD
            .decode(body_b64)
            .map_err(|_| TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Invalid)?;
        self.mac(&body)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        let body = String::from_utf8(body).map_err(|_| TokenError::Invalid)?;
        let parts: Vec<&str> = body.split('|').collect();
        let [tag, account, account_id, generation, expires_at, epid] = parts.as_slice() else {
            return Err(TokenError::Invalid);
        };
        if *tag != kind.tag() {
            return Err(TokenError::Invalid);
        }
        let claims = Claims {
            account: AccountName::parse(account).map_err(|_| TokenError::Invalid)?,
            account_id: account_id.parse().map_err(|_| TokenError::Invalid)?,
            generation: generation.parse().map_err(|_| TokenError::Invalid)?,
            expires_at: expires_at.parse().map_err(|_| TokenError::Invalid)?,
            epid: if epid.is_empty() {
                None
            } else {
                Some(Epid::parse(epid).map_err(|_| TokenError::Invalid)?)
            },
        };
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Tag that starts the body of every signed state, so no state is ever read as a token (whose
/// bodies start with their kind's tag) and no token as a state.
const STATE_TAG: &str = "S|";

impl TokenSigner {
    /// Signs an opaque state handed to clients (sync positions): `base64url(body).base64url(mac)`.
    pub fn sign_state(&self, body: &str) -> String {
        let body = format!("{STATE_TAG}{body}");
        let tag = self.mac(body.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The body of a state this server signed, or `None` if it was altered or is not a state.
    pub fn open_state(&self, state: &str) -> Option<String> {
        if state.len() > 2048 {
            return None;
        }
        let (body_b64, tag_b64) = state.trim().split_once('.')?;
        let body = URL_SAFE_NO_PAD.decode(body_b64).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).ok()?;
        self.mac(&body).verify_slice(&tag).ok()?;
        String::from_utf8(body)
            .ok()?
            .strip_prefix(STATE_TAG)
            .map(str::to_string)
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: i64) -> Claims {
        Claims {
            account: AccountName::parse("live:alice").unwrap(),
            account_id: 9,
            generation: 3,
            expires_at,
            epid: Some(Epid::parse("b958d334-651e-82fe-a2a1-3dfbb7f5cc08").unwrap()),
        }
    }

    #[test]
    fn states_are_tamper_evident_and_never_tokens() {
        let s = TokenSigner::from_key([7; 32]);
        let st = s.sign_state("M|alice|8:bob|42|0");
        assert_eq!(s.open_state(&st).as_deref(), Some("M|alice|8:bob|42|0"));
        assert_eq!(TokenSigner::from_key([8; 32]).open_state(&st), None);
        let (body, mac) = st.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode("S|M|alice|8:bob|41|0");
        assert_eq!(s.open_state(&format!("{forged_body}.{mac}")), None);
        assert_eq!(s.open_state(body), None);
        let token = s.issue(TokenKind::Login, &claims(100));
        assert_eq!(s.open_state(&token), None);
        assert!(s.verify(TokenKind::Login, &st, 0).is_err());
        for junk in ["", ".", "a.b", "é.é"] {
            assert_eq!(s.open_state(junk), None);
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = TokenSigner::from_key([7; 32]);
        let t = s.issue(TokenKind::Registration, &claims(100));
        assert_eq!(s.verify(TokenKind::Registration, &t, 50), Ok(claims(100)));
        assert_eq!(
            s.verify(TokenKind::Registration, &t, 100),
            Err(TokenError::Expired)
        );
        assert_eq!(s.verify(TokenKind::Login, &t, 50), Err(TokenError::Invalid));
        let other = TokenSigner::from_key([8; 32]);
        assert_eq!(
            other.verify(TokenKind::Registration, &t, 50),
            Err(TokenError::Invalid)
        );
        let mut forged = t.clone();
        forged.insert(3, 'x');
        assert_eq!(
            s.verify(TokenKind::Registration, &forged, 50),
            Err(TokenError::Invalid)
        );
        for junk in ["", ".", "a.b", "....", "é.é"] {
            assert_eq!(
                s.verify(TokenKind::Login, junk, 0),
                Err(TokenError::Invalid)
            );
        }
    }
}
