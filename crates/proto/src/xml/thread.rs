//! Group chats (§7): `PUT`/`DEL MSGR\THREAD`, `NFY MSGR\THREAD`, `GET MSGR\THREADS` and `ThreadActivity/*` bodies.

use super::{parse_root, Element, XmlError, XmlWriter};

/// One `<member>` of a thread.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The member's MRI.
    pub mri: String,
    /// `admin` or `user`; absent in removal requests.
    pub role: Option<String>,
}

/// A `<thread>` body: the client's create/change/remove request, or the server's full description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Thread {
    /// The thread id; empty when creating.
    pub id: String,
    /// Time of the last change (ms), in the full form.
    pub version: Option<u64>,
    /// Capability bits, in the full form.
    pub capabilities: Option<u32>,
    /// `<properties><topic>`: `Some("")` sets an empty topic, `None` leaves it alone.
    pub topic: Option<String>,
    /// `<properties><creator>`.
    pub creator: Option<String>,
    /// `<members><member>…`, in order.
    pub members: Vec<Member>,
}

impl Thread {
    /// Reads a `<thread>` element (its name is not checked).
    pub(crate) fn from_element(t: &Element) -> Result<Self, XmlError> {
        let properties = t.child("properties");
        let members = match t.child("members") {
            Some(m) => m
                .children_named("member")
                .map(|m| {
                    Ok(Member {
                        mri: m.required_text("mri")?.to_owned(),
                        role: m.opt_string("role"),
                    })
                })
                .collect::<Result<_, XmlError>>()?,
            None => Vec::new(),
        };
        Ok(Thread {
            id: t.opt_string("id").unwrap_or_default(),
            version: t.opt_num("version")?,
            capabilities: t.opt_num("capabilities")?,
            topic: properties.and_then(|p| p.opt_string("topic")),
            creator: properties.and_then(|p| p.opt_string("creator")),
            members,
        })
    }

    /// Parses a `<thread>` body in any of its forms.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        Self::from_element(&parse_root(input, "thread")?)
    }

    /// Writes the minimal (client request) form: only what is set; `<members>` only when non-empty.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        self.write(&mut w, false);
        w.finish()
    }

    /// Writes the full form of `NFY MSGR\THREAD`: `<topic>` always present, `<members>` always written.
    pub fn to_full_xml(&self) -> String {
        let mut w = XmlWriter::new();
        self.write(&mut w, true);
        w.finish()
    }

    fn write(&self, w: &mut XmlWriter, full: bool) {
        w.open("thread");
        w.leaf("id", &self.id);
        w.leaf_display_opt("version", self.version);
        w.leaf_display_opt("capabilities", self.capabilities);
        if full || self.topic.is_some() || self.creator.is_some() {
            w.open("properties");
            match (&self.topic, full) {
                (Some(topic), _) => w.leaf("topic", topic),
                (None, true) => w.leaf("topic", ""),
                (None, false) => {}
            }
            w.leaf_opt("creator", self.creator.as_deref());
            w.close("properties");
        }
        if full || !self.members.is_empty() {
            w.open("members");
            for m in &self.members {
                w.open("member");
                w.leaf("mri", &m.mri);
                w.leaf_opt("role", m.role.as_deref());
                w.close("member");
            }
            w.close("members");
        }
        w.close("thread");
    }
}

/// `GET MSGR\THREADS` request: `<threads><thread><id>…</id></thread>…</threads>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadsQuery {
    /// The thread ids asked for, in order.
    pub ids: Vec<String>,
}

impl ThreadsQuery {
    /// Parses a `<threads>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "threads")?;
        let ids = root
            .children_named("thread")
            .map(|t| t.required_text("id").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        Ok(ThreadsQuery { ids })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("threads");
        for id in &self.ids {
            w.open("thread");
            w.leaf("id", id);
            w.close("thread");
        }
        w.close("threads");
        w.finish()
    }
}

/// `GET MSGR\THREADS` response: full thread descriptions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadsResponse {
    /// The threads the caller belongs to, in the order asked.
    pub threads: Vec<Thread>,
}

impl ThreadsResponse {
    /// Parses a `<threads-response>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "threads-response")?;
        let threads = match root.child("threads") {
            Some(t) => t
                .children_named("thread")
                .map(Thread::from_element)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(ThreadsResponse { threads })
    }

    /// Writes the body, each thread in its full form.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("threads-response");
        w.open("threads");
        for t in &self.threads {
            t.write(&mut w, true);
        }
        w.close("threads");
        w.close("threads-response");
        w.finish()
    }
}

/// Shared shape of `<addmember>` and `<deletemember>`: event time, initiator, targets.
fn parse_member_event(
    input: &[u8],
    root_name: &'static str,
) -> Result<(u64, String, Vec<String>), XmlError> {
    let root = parse_root(input, root_name)?;
    Ok((
        root.required_num("eventtime")?,
        root.required_text("initiator")?.to_owned(),
        root.texts_of("target"),
    ))
}

fn write_member_event(
    root_name: &str,
    event_time: u64,
    initiator: &str,
    targets: &[String],
) -> String {
    let mut w = XmlWriter::new();
    w.open(root_name);
    w.leaf_display("eventtime", event_time);
    w.leaf("initiator", initiator);
    for t in targets {
        w.leaf("target", t);
    }
    w.close(root_name);
    w.finish()
}

/// `ThreadActivity/AddMember` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddMember {
    /// Time of the change (ms).
    pub event_time: u64,
    /// MRI of the member who made the change.
    pub initiator: String,
    /// MRIs of the members added.
    pub targets: Vec<String>,
}

impl AddMember {
    /// Parses an `<addmember>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let (event_time, initiator, targets) = parse_member_event(input, "addmember")?;
        Ok(AddMember {
            event_time,
            initiator,
            targets,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        write_member_event("addmember", self.event_time, &self.initiator, &self.targets)
    }
}

/// `ThreadActivity/DeleteMember` body (initiator = target means the member left).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteMember {
    /// Time of the change (ms).
    pub event_time: u64,
    /// MRI of the member who made the change.
    pub initiator: String,
    /// MRIs of the members removed.
    pub targets: Vec<String>,
}

impl DeleteMember {
    /// Parses a `<deletemember>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let (event_time, initiator, targets) = parse_member_event(input, "deletemember")?;
        Ok(DeleteMember {
            event_time,
            initiator,
            targets,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        write_member_event(
            "deletemember",
            self.event_time,
            &self.initiator,
            &self.targets,
        )
    }
}

/// `ThreadActivity/TopicUpdate` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicUpdate {
    /// Time of the change (ms).
    pub event_time: u64,
    /// MRI of the member who changed the topic.
    pub initiator: String,
    /// The new topic (may be empty).
    pub value: String,
}

impl TopicUpdate {
    /// Parses a `<topicupdate>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "topicupdate")?;
        Ok(TopicUpdate {
            event_time: root.required_num("eventtime")?,
            initiator: root.required_text("initiator")?.to_owned(),
            value: root.opt_string("value").unwrap_or_default(),
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("topicupdate");
        w.leaf_display("eventtime", self.event_time);
        w.leaf("initiator", &self.initiator);
        w.leaf("value", &self.value);
        w.close("topicupdate");
        w.finish()
    }
}

/// `ThreadActivity/RoleUpdate` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleUpdate {
    /// Time of the change (ms).
    pub event_time: u64,
    /// MRI of the admin who made the change.
    pub initiator: String,
    /// `(member MRI, new role)` pairs.
    pub targets: Vec<(String, String)>,
}

impl RoleUpdate {
    /// Parses a `<roleupdate>` body.
    pub fn parse(input: &[u8]) -> Result<Self, XmlError> {
        let root = parse_root(input, "roleupdate")?;
        let targets = root
            .children_named("target")
            .map(|t| {
                Ok((
                    t.required_text("id")?.to_owned(),
                    t.opt_string("role").unwrap_or_default(),
                ))
            })
            .collect::<Result<_, XmlError>>()?;
        Ok(RoleUpdate {
            event_time: root.required_num("eventtime")?,
            initiator: root.required_text("initiator")?.to_owned(),
            targets,
        })
    }

    /// Writes the body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new();
        w.open("roleupdate");
        w.leaf_display("eventtime", self.event_time);
        w.leaf("initiator", &self.initiator);
        for (id, role) in &self.targets {
            w.open("target");
            w.leaf("id", id);
            w.leaf("role", role);
            w.close("target");
        }
        w.close("roleupdate");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(mri: &str, role: Option<&str>) -> Member {
        Member {
            mri: mri.into(),
            role: role.map(Into::into),
        }
    }

    #[test]
    fn create_request_reference() {
        let body = b"<thread><id></id><members><member><mri>8:alice</mri><role>admin</role></member><member><mri>8:bob</mri><role>user</role></member></members></thread>";
        let t = Thread::parse(body).unwrap();
        assert_eq!(t.id, "");
        assert_eq!(t.topic, None);
        assert_eq!(
            t.members,
            [
                member("8:alice", Some("admin")),
                member("8:bob", Some("user"))
            ]
        );
        assert_eq!(t.to_xml().as_bytes(), body);
    }

    #[test]
    fn create_reply_topic_change_and_removal() {
        let reply = b"<thread><id>19:0f3a9c@thread.skype</id></thread>";
        let t = Thread::parse(reply).unwrap();
        assert_eq!(
            t,
            Thread {
                id: "19:0f3a9c@thread.skype".into(),
                ..Default::default()
            }
        );
        assert_eq!(t.to_xml().as_bytes(), reply);

        let topic = b"<thread><id>19:0f3a9c@thread.skype</id><properties><topic>Weekend plans</topic></properties></thread>";
        let t = Thread::parse(topic).unwrap();
        assert_eq!(t.topic.as_deref(), Some("Weekend plans"));
        assert_eq!(t.to_xml().as_bytes(), topic);

        let del = b"<thread><id>19:0f3a9c@thread.skype</id><members><member><mri>8:bob</mri></member></members></thread>";
        let t = Thread::parse(del).unwrap();
        assert_eq!(t.members, [member("8:bob", None)]);
        assert_eq!(t.to_xml().as_bytes(), del);
        assert_eq!(
            Thread::parse(
                b"<thread><members><member><role>user</role></member></members></thread>"
            ),
            Err(XmlError::Missing("mri"))
        );
    }

    #[test]
    fn full_notification_reference() {
        let body = "<thread><id>19:0f3a9c@thread.skype</id><version>1430577278672</version><capabilities>2047</capabilities>
         <properties><topic>Weekend plans</topic><creator>8:alice</creator></properties>
         <members><member><mri>8:alice</mri><role>admin</role></member><member><mri>8:bob</mri><role>user</role></member></members></thread>";
        let t = Thread::parse(body.as_bytes()).unwrap();
        assert_eq!(t.version, Some(1430577278672));
        assert_eq!(t.capabilities, Some(2047));
        assert_eq!(t.creator.as_deref(), Some("8:alice"));
        assert_eq!(t.members.len(), 2);
        assert_eq!(t.to_full_xml(), body.replace("\n         ", ""));
        assert_eq!(t.to_xml(), t.to_full_xml());
    }

    #[test]
    fn full_form_always_has_topic_and_members() {
        let t = Thread {
            id: "19:x@thread.skype".into(),
            version: Some(1),
            capabilities: Some(2047),
            ..Default::default()
        };
        let xml = t.to_full_xml();
        assert_eq!(
            xml,
            "<thread><id>19:x@thread.skype</id><version>1</version><capabilities>2047</capabilities><properties><topic></topic></properties><members></members></thread>"
        );
        let back = Thread::parse(xml.as_bytes()).unwrap();
        assert_eq!(back.topic.as_deref(), Some(""));
    }

    #[test]
    fn threads_query_and_response() {
        let body = b"<threads><thread><id>19:a@thread.skype</id></thread><thread><id>19:b@thread.skype</id></thread></threads>";
        let q = ThreadsQuery::parse(body).unwrap();
        assert_eq!(q.ids, ["19:a@thread.skype", "19:b@thread.skype"]);
        assert_eq!(q.to_xml().as_bytes(), body);

        let r = ThreadsResponse {
            threads: vec![Thread {
                id: "19:a@thread.skype".into(),
                version: Some(2),
                capabilities: Some(2047),
                topic: Some("t".into()),
                creator: Some("8:alice".into()),
                members: vec![member("8:alice", Some("admin"))],
            }],
        };
        let xml = r.to_xml();
        assert!(xml.starts_with(
            "<threads-response><threads><thread><id>19:a@thread.skype</id><version>2</version>"
        ));
        assert!(xml.ends_with("</thread></threads></threads-response>"));
        assert_eq!(ThreadsResponse::parse(xml.as_bytes()).unwrap(), r);
    }

    #[test]
    fn activity_bodies_reference() {
        let body = b"<addmember><eventtime>1430577278672</eventtime><initiator>8:alice</initiator><target>8:bob</target><target>8:carol</target></addmember>";
        let a = AddMember::parse(body).unwrap();
        assert_eq!(a.event_time, 1430577278672);
        assert_eq!(a.initiator, "8:alice");
        assert_eq!(a.targets, ["8:bob", "8:carol"]);
        assert_eq!(a.to_xml().as_bytes(), body);

        let d = DeleteMember {
            event_time: 3,
            initiator: "8:bob".into(),
            targets: vec!["8:bob".into()],
        };
        assert_eq!(
            d.to_xml(),
            "<deletemember><eventtime>3</eventtime><initiator>8:bob</initiator><target>8:bob</target></deletemember>"
        );
        assert_eq!(DeleteMember::parse(d.to_xml().as_bytes()).unwrap(), d);
        assert!(matches!(
            DeleteMember::parse(body),
            Err(XmlError::UnexpectedRoot { .. })
        ));

        let body = b"<topicupdate><eventtime>5</eventtime><initiator>8:alice</initiator><value>new topic</value></topicupdate>";
        let t = TopicUpdate::parse(body).unwrap();
        assert_eq!(t.value, "new topic");
        assert_eq!(t.to_xml().as_bytes(), body);

        let body = b"<roleupdate><eventtime>6</eventtime><initiator>8:alice</initiator><target><id>8:bob</id><role>admin</role></target></roleupdate>";
        let r = RoleUpdate::parse(body).unwrap();
        assert_eq!(r.targets, [("8:bob".to_owned(), "admin".to_owned())]);
        assert_eq!(r.to_xml().as_bytes(), body);
        assert_eq!(
            AddMember::parse(b"<addmember><initiator>8:a</initiator></addmember>"),
            Err(XmlError::Missing("eventtime"))
        );
    }
}
