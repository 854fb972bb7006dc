//! Conversations and history sync (§6): requests, the `<conversation>` element and its responses.

use super::{parse_root, write_text_pairs, Element, XmlError, XmlWriter};

/// Reads `<properties>` as ordered `(name, text)` pairs (empty when absent).
fn properties_of(element: &Element) -> Vec<(String, String)> {
    element
        .child("properties")
        .map(Element::text_pairs)
        .unwrap_or_default()
}

/// A number that may be written as an empty element (`<start/>`): clients mean "not given".
fn opt_num_or_empty<T: std::str::FromStr>(
    element: &Element,
    name: &str,
) -> Result<Option<T>, XmlError> {
    match element.child_text(name).map(str::trim) {
        None | Some("") => Ok(None),
        Some(_) => element.opt_num(name),
    }
}

/// Reads every `<message>` of a `<messages>` child (empty when absent).
fn messages_of(element: &Element) -> Result<Vec<HistoryMessage>, XmlError> {
    match element.child("messages") {
        Some(m) => m
            .children_named("message")
            .map(HistoryMessage::from_element)
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// Writes `<messages>…</messages>`, or `<messages/>` when there are none.
fn write_messages(w: &mut XmlWriter, messages: &[HistoryMessage]) {
    if messages.is_empty() {
        w.empty("messages", &[]);
        return;
    }
    w.open("messages");
    for m in messages {
        m.write(w);
    }
    w.close("messages");
}

/// `GET MSGR\RECENTCONVERSATIONS` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecentConversations {
    /// Only conversations active at or after this time (ms); absent means 0.
    pub start: Option<u64>,
    /// Maximum number of conversations.
    pub pagesize: Option<u32>,
    /// The `<syncstate>` of the previous page, to continue from.
    pub syncstate: Option<String>,
}

impl RecentConversations {
    /// Parses a `<recentconversations>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "recentconversations")?;
        Ok(RecentConversations {
            start: opt_num_or_empty(&root, "start")?,
            pagesize: opt_num_or_empty(&root, "pagesize")?,
            syncstate: root.opt_string("syncstate"),
        })
    }

    /// Writes the body: start, pagesize, syncstate (each only if present).
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("recentconversations");
        w.leaf_display_opt("start", self.start);
        w.leaf_display_opt("pagesize", self.pagesize);
        w.leaf_opt("syncstate", self.syncstate.as_deref());
        w.close("recentconversations");
        w.finish()
    }
}

/// `GET MSGR\MESSAGESBYCONVERSATION` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessagesByConversation {
    /// The conversation id (`8:bob`, `19:…@thread.skype`).
    pub id: String,
    /// Lower time bound (ms).
    pub start: Option<u64>,
    /// Maximum number of messages.
    pub pagesize: Option<u32>,
    /// The `<messagessyncstate>` of the previous page, to continue from.
    pub messagessyncstate: Option<String>,
}

impl MessagesByConversation {
    /// Parses a `<messagesbyconversation>` body; `<id>` is required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "messagesbyconversation")?;
        Ok(MessagesByConversation {
            id: root.required_text("id")?.to_owned(),
            start: opt_num_or_empty(&root, "start")?,
            pagesize: opt_num_or_empty(&root, "pagesize")?,
            messagessyncstate: root.opt_string("messagessyncstate"),
        })
    }

    /// Writes the body: id, start, messagessyncstate, pagesize (the order of the reference's paging example).
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("messagesbyconversation");
        w.leaf("id", &self.id);
        w.leaf_display_opt("start", self.start);
        w.leaf_opt("messagessyncstate", self.messagessyncstate.as_deref());
        w.leaf_display_opt("pagesize", self.pagesize);
        w.close("messagesbyconversation");
        w.finish()
    }
}

/// `GET MSGR\CONVERSATIONS` request: `<conversations><conversation><id>…</id></conversation>…</conversations>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationsQuery {
    /// The conversation ids asked for, in order.
    pub ids: Vec<String>,
}

impl ConversationsQuery {
    /// Parses a `<conversations>` query body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "conversations")?;
        let ids = root
            .children_named("conversation")
            .map(|c| c.required_text("id").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        Ok(ConversationsQuery { ids })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("conversations");
        for id in &self.ids {
            w.open("conversation");
            w.leaf("id", id);
            w.close("conversation");
        }
        w.close("conversations");
        w.finish()
    }
}

/// `PUT MSGR\CONVERSATION`: set per-account properties of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationPut {
    /// The conversation id.
    pub id: String,
    /// `(name, text)` pairs, e.g. `consumptionhorizon`.
    pub properties: Vec<(String, String)>,
}

impl ConversationPut {
    /// Parses a `<conversation>` body; `<id>` is required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "conversation")?;
        Ok(ConversationPut {
            id: root.required_text("id")?.to_owned(),
            properties: properties_of(&root),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("conversation");
        w.leaf("id", &self.id);
        write_text_pairs(&mut w, "properties", &self.properties);
        w.close("conversation");
        w.finish()
    }
}

/// `NFY MSGR\CONVERSATION`: a conversation's properties changed from another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationNotify {
    /// The conversation id.
    pub id: String,
    /// Time of the change (ms).
    pub version: u64,
    /// `(name, text)` pairs.
    pub properties: Vec<(String, String)>,
}

impl ConversationNotify {
    /// Parses a `<conversation>` notification body; `<id>` and `<version>` are required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "conversation")?;
        Ok(ConversationNotify {
            id: root.required_text("id")?.to_owned(),
            version: root.required_num("version")?,
            properties: properties_of(&root),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("conversation");
        w.leaf("id", &self.id);
        w.leaf_display("version", self.version);
        write_text_pairs(&mut w, "properties", &self.properties);
        w.close("conversation");
        w.finish()
    }
}

/// The `<thread>` of a group conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadRef {
    /// The thread id (`19:…@thread.skype`).
    pub id: String,
    /// When the account left the thread (ms), if it did.
    pub last_leave_at: Option<u64>,
}

/// One `<message>` of history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryMessage {
    /// `<messageid>`: the server's id (arrival time, ms).
    pub message_id: u64,
    /// `<originalarrivaltime>`: ISO 8601 with milliseconds and `Z`.
    pub original_arrival_time: String,
    /// `<from>`: sender MRI, possibly with `;epid={…}`.
    pub from: String,
    /// `<messagetype>`, e.g. `Text`, `RichText`, `ThreadActivity/AddMember`.
    pub message_type: String,
    /// `<content>`: the message body as plain (unescaped) text.
    pub content: String,
    /// `<clientmessageid>`, if the client sent one.
    pub client_message_id: Option<String>,
    /// `<composetime>`, if known.
    pub compose_time: Option<String>,
}

impl HistoryMessage {
    /// Reads one `<message>` element; `messageid`, `from` and `messagetype` are required.
    pub(crate) fn from_element(m: &Element) -> Result<Self, XmlError> {
        Ok(HistoryMessage {
            message_id: m.required_num("messageid")?,
            original_arrival_time: m.opt_string("originalarrivaltime").unwrap_or_default(),
            from: m.required_text("from")?.to_owned(),
            message_type: m.required_text("messagetype")?.to_owned(),
            content: m.opt_string("content").unwrap_or_default(),
            client_message_id: m.opt_string("clientmessageid"),
            compose_time: m.opt_string("composetime"),
        })
    }

    /// Parses a lone `<message>` element.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Self::from_element(&parse_root(input, "message")?)
    }

    /// Writes the `<message>` element.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        self.write(&mut w);
        w.finish()
    }

    fn write(&self, w: &mut XmlWriter) {
        w.open("message");
        w.leaf_display("messageid", self.message_id);
        w.leaf("originalarrivaltime", &self.original_arrival_time);
        w.leaf("from", &self.from);
        w.leaf("messagetype", &self.message_type);
        w.leaf("content", &self.content);
        w.leaf_opt("clientmessageid", self.client_message_id.as_deref());
        w.leaf_opt("composetime", self.compose_time.as_deref());
        w.close("message");
    }
}

/// One `<conversation>` of a sync response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversation {
    /// The conversation id.
    pub id: String,
    /// Time of its last change (ms).
    pub version: u64,
    /// What the account set with `PUT MSGR\CONVERSATION`.
    pub properties: Vec<(String, String)>,
    /// Present for group chats.
    pub thread: Option<ThreadRef>,
    /// Messages (only the last one in recent-conversations).
    pub messages: Vec<HistoryMessage>,
}

impl Conversation {
    /// Reads one `<conversation>` element; `<id>` and `<version>` are required.
    pub(crate) fn from_element(c: &Element) -> Result<Self, XmlError> {
        let thread = match c.child("thread") {
            Some(t) => Some(ThreadRef {
                id: t.required_text("id")?.to_owned(),
                last_leave_at: t.opt_num("lastleaveat")?,
            }),
            None => None,
        };
        Ok(Conversation {
            id: c.required_text("id")?.to_owned(),
            version: c.required_num("version")?,
            properties: properties_of(c),
            thread,
            messages: messages_of(c)?,
        })
    }

    /// Parses a lone `<conversation>` element of the response form.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Self::from_element(&parse_root(input, "conversation")?)
    }

    /// Writes the `<conversation>` element: id, version, properties, options, thread, messages.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        self.write(&mut w);
        w.finish()
    }

    fn write(&self, w: &mut XmlWriter) {
        w.open("conversation");
        w.leaf("id", &self.id);
        w.leaf_display("version", self.version);
        write_text_pairs(w, "properties", &self.properties);
        w.empty("options", &[]);
        if let Some(t) = &self.thread {
            w.open("thread");
            w.leaf("id", &t.id);
            w.leaf_display_opt("lastleaveat", t.last_leave_at);
            w.close("thread");
        }
        write_messages(w, &self.messages);
        w.close("conversation");
    }
}

/// Reads `<conversations><conversation>…` under a response root (empty when absent).
fn conversations_of(root: &Element) -> Result<Vec<Conversation>, XmlError> {
    match root.child("conversations") {
        Some(c) => c
            .children_named("conversation")
            .map(Conversation::from_element)
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// Writes `<conversations>…</conversations>`.
fn write_conversations(w: &mut XmlWriter, conversations: &[Conversation]) {
    w.open("conversations");
    for c in conversations {
        c.write(w);
    }
    w.close("conversations");
}

/// `GET MSGR\RECENTCONVERSATIONS` response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecentConversationsResponse {
    /// Conversations, most recent first.
    pub conversations: Vec<Conversation>,
    /// `Some(true)` when more pages remain.
    pub hasmore: Option<bool>,
    /// The state to send back for the next page.
    pub syncstate: Option<String>,
}

impl RecentConversationsResponse {
    /// Parses a `<recentconversations-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "recentconversations-response")?;
        Ok(RecentConversationsResponse {
            conversations: conversations_of(&root)?,
            hasmore: root.opt_bool("hasmore")?,
            syncstate: root.opt_string("syncstate"),
        })
    }

    /// Writes the body: conversations, then hasmore and syncstate when present.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("recentconversations-response");
        write_conversations(&mut w, &self.conversations);
        w.leaf_display_opt("hasmore", self.hasmore);
        w.leaf_opt("syncstate", self.syncstate.as_deref());
        w.close("recentconversations-response");
        w.finish()
    }
}

/// `GET MSGR\MESSAGESBYCONVERSATION` response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessagesByConversationResponse {
    /// The conversation id.
    pub id: String,
    /// Whether older messages remain (false when absent).
    pub hasmore: bool,
    /// The state to send back for the next (older) page.
    pub messagessyncstate: Option<String>,
    /// Messages, newest first.
    pub messages: Vec<HistoryMessage>,
}

impl MessagesByConversationResponse {
    /// Parses a `<messagesbyconversation-response>` body; `<id>` is required.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "messagesbyconversation-response")?;
        Ok(MessagesByConversationResponse {
            id: root.required_text("id")?.to_owned(),
            hasmore: root.opt_bool("hasmore")?.unwrap_or(false),
            messagessyncstate: root.opt_string("messagessyncstate"),
            messages: messages_of(&root)?,
        })
    }

    /// Writes the body: id, hasmore, messagessyncstate, messages.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("messagesbyconversation-response");
        w.leaf("id", &self.id);
        w.leaf_display("hasmore", self.hasmore);
        w.leaf_opt("messagessyncstate", self.messagessyncstate.as_deref());
        write_messages(&mut w, &self.messages);
        w.close("messagesbyconversation-response");
        w.finish()
    }
}

/// `GET MSGR\CONVERSATIONS` response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationsResponse {
    /// One conversation per known id asked for.
    pub conversations: Vec<Conversation>,
}

impl ConversationsResponse {
    /// Parses a `<conversations-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "conversations-response")?;
        Ok(ConversationsResponse {
            conversations: conversations_of(&root)?,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("conversations-response");
        write_conversations(&mut w, &self.conversations);
        w.close("conversations-response");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_request_reference() {
        let body = b"<recentconversations><start>1428249688000</start><pagesize>100</pagesize></recentconversations>";
        let r = RecentConversations::parse(body).unwrap();
        assert_eq!(
            r,
            RecentConversations {
                start: Some(1428249688000),
                pagesize: Some(100),
                syncstate: None
            }
        );
        assert_eq!(r.to_xml().as_bytes(), body);
        assert_eq!(
            RecentConversations::parse(b"<recentconversations/>").unwrap(),
            RecentConversations::default()
        );
        assert!(RecentConversations::parse(
            b"<recentconversations><start>soon</start></recentconversations>"
        )
        .is_err());
        assert_eq!(
            RecentConversations::parse(
                b"<recentconversations><start/><pagesize> </pagesize></recentconversations>"
            )
            .unwrap(),
            RecentConversations::default()
        );
    }

    #[test]
    fn recent_response_reference() {
        let body = "<recentconversations-response><conversations>
         <conversation><id>8:bob</id><version>1430489866083</version>
           <properties><consumptionhorizon>1430404148000;1430489865000;10156429743073042633</consumptionhorizon></properties>
           <options/>
           <messages><message><messageid>1430300402349</messageid><originalarrivaltime>2015-04-29T09:36:41.592Z</originalarrivaltime>
             <from>8:bob;epid={00155193-decb-dc89-95e0-43bd987ed463}</from><messagetype>Text</messagetype><content>my message</content>
             <clientmessageid>5120743105835678321</clientmessageid><composetime>2015-04-29T09:36:41.592Z</composetime></message></messages>
         </conversation>
         <conversation><id>19:0f3a@thread.skype</id><version>1430489866084</version><properties/><options/>
           <thread><id>19:0f3a@thread.skype</id></thread><messages><message><messageid>1</messageid><originalarrivaltime>2015-04-29T09:36:41.592Z</originalarrivaltime><from>8:alice</from><messagetype>RichText</messagetype><content>&lt;b&gt;hi&lt;/b&gt; &amp; bye</content></message></messages></conversation>
       </conversations></recentconversations-response>";
        let r = RecentConversationsResponse::parse(body.as_bytes()).unwrap();
        assert_eq!(r.hasmore, None);
        assert_eq!(r.conversations.len(), 2);
        let bob = &r.conversations[0];
        assert_eq!(bob.id, "8:bob");
        assert_eq!(bob.version, 1430489866083);
        assert_eq!(
            bob.properties,
            [(
                "consumptionhorizon".to_owned(),
                "1430404148000;1430489865000;10156429743073042633".to_owned()
            )]
        );
        assert_eq!(bob.thread, None);
        let m = &bob.messages[0];
        assert_eq!(m.message_id, 1430300402349);
        assert_eq!(m.original_arrival_time, "2015-04-29T09:36:41.592Z");
        assert_eq!(m.from, "8:bob;epid={00155193-decb-dc89-95e0-43bd987ed463}");
        assert_eq!(m.message_type, "Text");
        assert_eq!(m.content, "my message");
        assert_eq!(m.client_message_id.as_deref(), Some("5120743105835678321"));
        assert_eq!(m.compose_time.as_deref(), Some("2015-04-29T09:36:41.592Z"));
        let group = &r.conversations[1];
        assert_eq!(
            group.thread,
            Some(ThreadRef {
                id: "19:0f3a@thread.skype".into(),
                last_leave_at: None
            })
        );
        assert_eq!(group.messages[0].content, "<b>hi</b> & bye");
        let xml = r.to_xml();
        assert!(xml.contains("<content>&lt;b&gt;hi&lt;/b&gt; &amp; bye</content>"));
        assert!(xml.starts_with("<recentconversations-response><conversations><conversation><id>8:bob</id><version>1430489866083</version><properties><consumptionhorizon>"));
        assert_eq!(
            RecentConversationsResponse::parse(xml.as_bytes()).unwrap(),
            r
        );
    }

    #[test]
    fn left_thread_and_paging_fields() {
        let r = RecentConversationsResponse {
            conversations: vec![Conversation {
                id: "19:ab@thread.skype".into(),
                version: 5,
                properties: vec![],
                thread: Some(ThreadRef {
                    id: "19:ab@thread.skype".into(),
                    last_leave_at: Some(1430577278672),
                }),
                messages: vec![],
            }],
            hasmore: Some(true),
            syncstate: Some("s1".into()),
        };
        let xml = r.to_xml();
        assert_eq!(
            xml,
            "<recentconversations-response><conversations><conversation><id>19:ab@thread.skype</id><version>5</version>\
             <properties/><options/><thread><id>19:ab@thread.skype</id><lastleaveat>1430577278672</lastleaveat></thread>\
             <messages/></conversation></conversations><hasmore>true</hasmore><syncstate>s1</syncstate></recentconversations-response>"
        );
        assert_eq!(
            RecentConversationsResponse::parse(xml.as_bytes()).unwrap(),
            r
        );
    }

    #[test]
    fn messages_by_conversation_reference() {
        let body = b"<messagesbyconversation><id>8:bob</id><start>1428249688000</start><pagesize>100</pagesize></messagesbyconversation>";
        let q = MessagesByConversation::parse(body).unwrap();
        assert_eq!(q.id, "8:bob");
        assert_eq!(q.start, Some(1428249688000));
        assert_eq!(q.pagesize, Some(100));
        assert_eq!(q.to_xml().as_bytes(), body);
        let next = b"<messagesbyconversation><id>8:bob</id><start>1428249688000</start><messagessyncstate>opaque</messagessyncstate><pagesize>100</pagesize></messagesbyconversation>";
        let q = MessagesByConversation::parse(next).unwrap();
        assert_eq!(q.messagessyncstate.as_deref(), Some("opaque"));
        assert_eq!(q.to_xml().as_bytes(), next);
        assert_eq!(
            MessagesByConversation::parse(b"<messagesbyconversation/>"),
            Err(XmlError::Missing("id"))
        );
        let q = MessagesByConversation::parse(
            b"<messagesbyconversation><id>8:bob</id><start></start><messagessyncstate/></messagesbyconversation>",
        )
        .unwrap();
        assert_eq!((q.start, q.pagesize), (None, None));
    }

    #[test]
    fn messages_by_conversation_response_reference() {
        let body = b"<messagesbyconversation-response><id>8:bob</id><hasmore>true</hasmore><messagessyncstate>opaque</messagessyncstate>\n  <messages><message><messageid>2</messageid><originalarrivaltime>t</originalarrivaltime><from>8:bob</from><messagetype>Text</messagetype><content>b</content></message><message><messageid>1</messageid><originalarrivaltime>t</originalarrivaltime><from>8:alice</from><messagetype>Text</messagetype><content>a</content></message></messages></messagesbyconversation-response>";
        let r = MessagesByConversationResponse::parse(body).unwrap();
        assert_eq!(r.id, "8:bob");
        assert!(r.hasmore);
        assert_eq!(r.messagessyncstate.as_deref(), Some("opaque"));
        assert_eq!(
            r.messages.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            [2, 1]
        );
        let compact = std::str::from_utf8(body).unwrap().replace("\n  ", "");
        assert_eq!(r.to_xml(), compact);
        assert_eq!(
            MessagesByConversationResponse::parse(r.to_xml().as_bytes()).unwrap(),
            r
        );
        let done = MessagesByConversationResponse {
            id: "8:bob".into(),
            ..Default::default()
        };
        assert_eq!(
            done.to_xml(),
            "<messagesbyconversation-response><id>8:bob</id><hasmore>false</hasmore><messages/></messagesbyconversation-response>"
        );
    }

    #[test]
    fn conversations_query_and_response() {
        let body = b"<conversations><conversation><id>8:bob</id></conversation><conversation><id>19:x@thread.skype</id></conversation></conversations>";
        let q = ConversationsQuery::parse(body).unwrap();
        assert_eq!(q.ids, ["8:bob", "19:x@thread.skype"]);
        assert_eq!(q.to_xml().as_bytes(), body);
        let seed =
            b"<conversations>\n  <conversation><id>{id}</id></conversation>\n</conversations>";
        assert_eq!(ConversationsQuery::parse(seed).unwrap().ids, ["{id}"]);

        let r = ConversationsResponse {
            conversations: vec![Conversation {
                id: "8:bob".into(),
                version: 7,
                ..Default::default()
            }],
        };
        assert_eq!(
            r.to_xml(),
            "<conversations-response><conversations><conversation><id>8:bob</id><version>7</version><properties/><options/><messages/></conversation></conversations></conversations-response>"
        );
        assert_eq!(
            ConversationsResponse::parse(r.to_xml().as_bytes()).unwrap(),
            r
        );
    }

    #[test]
    fn conversation_put_and_notify_reference() {
        let body = b"<conversation><id>8:bob</id><properties><consumptionhorizon>1431964251000;1431964252000;2928664941477818879</consumptionhorizon></properties></conversation>";
        let p = ConversationPut::parse(body).unwrap();
        assert_eq!(p.id, "8:bob");
        assert_eq!(
            p.properties[0].1,
            "1431964251000;1431964252000;2928664941477818879"
        );
        assert_eq!(p.to_xml().as_bytes(), body);
        let seed = b"<conversation>\n  <id>8:live:user1</id>\n  <properties>\n    <consumptionhorizon>1;2;3</consumptionhorizon>\n  </properties>\n</conversation>";
        assert_eq!(ConversationPut::parse(seed).unwrap().id, "8:live:user1");

        let body = b"<conversation><id>8:bob</id><version>1431964252000</version><properties><consumptionhorizon>1;2;3</consumptionhorizon></properties></conversation>";
        let n = ConversationNotify::parse(body).unwrap();
        assert_eq!(n.version, 1431964252000);
        assert_eq!(n.to_xml().as_bytes(), body);
        assert_eq!(
            ConversationNotify::parse(b"<conversation><id>8:bob</id></conversation>"),
            Err(XmlError::Missing("version"))
        );
    }
}
