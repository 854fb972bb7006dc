//! `PUT MSGR\SUBSCRIPTIONS`: the `<subscribe>` body (§4.2).

use super::{parse_root, XmlError, XmlWriter};

/// The `<subscribe>` body: which feeds this endpoint adds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    /// `<messaging>` present: live messages and conversation notifications.
    pub messaging: bool,
    /// `<presence>` present: contacts' presence notifications.
    pub presence: bool,
    /// `<notifications>` present (accepted, no effect).
    pub notifications: bool,
    /// `<notifications><partners><partner>…` values, in order.
    pub partners: Vec<String>,
}

impl Subscribe {
    /// Parses a `<subscribe>` body; a section counts as asked for whenever its element is present.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "subscribe")?;
        let notifications = root.child("notifications");
        let partners = notifications
            .and_then(|n| n.child("partners"))
            .map(|p| p.texts_of("partner"))
            .unwrap_or_default();
        Ok(Subscribe {
            messaging: root.child("messaging").is_some(),
            presence: root.child("presence").is_some(),
            notifications: notifications.is_some(),
            partners,
        })
    }

    /// Writes the body in the order real clients use: notifications, presence, messaging.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("subscribe");
        // Partners cannot be expressed without the notifications element that holds them.
        if self.notifications || !self.partners.is_empty() {
            w.open("notifications");
            w.open("partners");
            for p in &self.partners {
                w.leaf("partner", p);
            }
            w.close("partners");
            w.close("notifications");
        }
        if self.presence {
            w.raw("<presence><buddies><all/></buddies></presence>");
        }
        if self.messaging {
            w.raw("<messaging><im/><conversations/></messaging>");
        }
        w.close("subscribe");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messaging_only() {
        let s = Subscribe::parse(
            b"<subscribe><messaging><im /><conversations /></messaging></subscribe>",
        )
        .unwrap();
        assert_eq!(
            s,
            Subscribe {
                messaging: true,
                ..Default::default()
            }
        );
        assert_eq!(Subscribe::parse(s.to_xml().as_bytes()).unwrap(), s);
    }

    #[test]
    fn presence_and_messaging() {
        let s = Subscribe::parse(
            b"<subscribe><presence><buddies><all /></buddies></presence><messaging><im /><conversations /></messaging></subscribe>",
        )
        .unwrap();
        assert_eq!(
            s,
            Subscribe {
                messaging: true,
                presence: true,
                ..Default::default()
            }
        );
        assert_eq!(
            s.to_xml(),
            "<subscribe><presence><buddies><all/></buddies></presence><messaging><im/><conversations/></messaging></subscribe>"
        );
    }

    #[test]
    fn notifications_presence_and_messaging() {
        let body = b"<subscribe><notifications><partners><partner>Hotmail</partner><partner>ABCH</partner></partners></notifications>\n               <presence><buddies><all /></buddies></presence><messaging><im /><conversations /></messaging></subscribe>";
        let s = Subscribe::parse(body).unwrap();
        assert!(s.messaging && s.presence && s.notifications);
        assert_eq!(s.partners, ["Hotmail", "ABCH"]);
        assert_eq!(Subscribe::parse(s.to_xml().as_bytes()).unwrap(), s);
    }

    #[test]
    fn empty_subscribe() {
        let s = Subscribe::parse(b"<subscribe/>").unwrap();
        assert_eq!(s, Subscribe::default());
        assert_eq!(s.to_xml(), "<subscribe></subscribe>");
    }
}
