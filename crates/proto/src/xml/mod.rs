//! Typed XML bodies of the MSNP24 commands (one module per body), on top of a small, bounded tree parser.
//!
//! Every body type has `parse(&[u8])` and `to_xml()`. Parsing never panics and is bounded in depth and size,
//! so it is safe on hostile input; writing is compact (no declaration, no indentation).

pub mod auth;
pub mod bind;
pub mod connect;
pub mod contacts;
pub mod conversations;
pub mod endpoint;
pub mod misc;
pub mod presence_doc;
pub mod presence_query;
pub mod subscribe;
pub mod thread;

#[cfg(test)]
mod tests;

pub use auth::{AuthResponse, AuthUser};
pub use bind::{ClientInfo, Msgr, MsgrResponse};
pub use connect::{Connect, ConnectResponse};
pub use contacts::{ContactEntry, ContactList};
pub use conversations::{
    Conversation, ConversationNotify, ConversationPut, ConversationsQuery, ConversationsResponse,
    HistoryMessage, MessagesByConversation, MessagesByConversationResponse, RecentConversations,
    RecentConversationsResponse, ThreadRef,
};
pub use endpoint::{ActiveEndpoint, ImOnlineEndpoint, ImOnlineResponse};
pub use misc::{Challenge, Networks, Options, Out, Partners, ReportSpam, Wait, Xfr};
pub use presence_doc::{EndpointDoc, ServiceDoc, UserDoc};
pub use presence_query::{PresenceQuery, PresenceResponse};
pub use subscribe::Subscribe;
pub use thread::{
    AddMember, DeleteMember, Member, RoleUpdate, Thread, ThreadsQuery, ThreadsResponse, TopicUpdate,
};

use std::fmt::Display;
use std::str::FromStr;

use quick_xml::events::Event;
use quick_xml::Reader;

/// Maximum element nesting depth accepted by [`parse_element`] (the root is depth 1).
pub const MAX_DEPTH: usize = 32;
/// Maximum number of elements in one document accepted by [`parse_element`].
pub const MAX_ELEMENTS: usize = 20_000;

/// Maximum attributes on one element: the duplicate check costs quadratic time in their number,
/// and no real body has more than a handful.
pub const MAX_ATTRIBUTES: usize = 64;

/// Longest excerpt of an offending value kept in an error, so hostile input cannot bloat logs.
const MAX_ERROR_VALUE: usize = 64;

/// Why an XML body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The bytes are not well-formed UTF-8 XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The document's root element is not the one this body requires.
    #[error("unexpected root element: expected <{expected}>, got <{got}>")]
    UnexpectedRoot {
        /// The root element name the body requires.
        expected: &'static str,
        /// The root element name found.
        got: String,
    },
    /// A required element (or attribute, written `element@attr`) is absent.
    #[error("missing required element <{0}>")]
    Missing(&'static str),
    /// An element or attribute holds a value of the wrong kind (e.g. not a number).
    #[error("invalid value for <{element}>: {value:?}")]
    InvalidValue {
        /// The element (or `element@attr`) holding the value.
        element: String,
        /// The offending value, truncated.
        value: String,
    },
    /// Elements are nested deeper than [`MAX_DEPTH`].
    #[error("XML nested too deeply (limit {MAX_DEPTH})")]
    TooDeep,
    /// The document holds more than [`MAX_ELEMENTS`] elements.
    #[error("too many XML elements (limit {MAX_ELEMENTS})")]
    TooManyElements,
    /// The document carries a DOCTYPE, which is never accepted (entity expansion attacks).
    #[error("DOCTYPE is not allowed")]
    Doctype,
}

impl XmlError {
    /// Builds an [`XmlError::InvalidValue`], truncating the value.
    pub(crate) fn invalid(element: &str, value: &str) -> Self {
        let value = match value.char_indices().nth(MAX_ERROR_VALUE) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        XmlError::InvalidValue {
            element: element.to_owned(),
            value,
        }
    }
}

/// One parsed XML element: its name, attributes, child elements and unescaped text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// The element name as written, prefix included.
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// All character data directly inside this element, concatenated; empty if it was only whitespace.
    pub text: String,
}

impl Element {
    /// Creates an element with a name and nothing else.
    pub fn new(name: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ..Element::default()
        }
    }

    /// The first child element with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All child elements with this name, in document order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child element with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The value of the attribute with this name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The element's content re-serialised: escaped text, then every child element.
    ///
    /// Text and children are stored apart, so mixed content comes back with its text first.
    pub fn inner_xml(&self) -> String {
        let mut out = String::new();
        self.write_inner(&mut out);
        out
    }

    /// The whole element re-serialised compactly (`<a/>` when it has no content).
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_outer(&mut out);
        out
    }

    fn write_inner(&self, out: &mut String) {
        out.push_str(&escape_text(&self.text));
        for child in &self.children {
            child.write_outer(out);
        }
    }

    // Recursion is bounded: parsed trees are at most MAX_DEPTH deep, and hand-built ones are the caller's.
    fn write_outer(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape_attr(v));
            out.push('"');
        }
        if self.text.is_empty() && self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        self.write_inner(out);
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Fails unless this element is named `expected`.
    pub(crate) fn expect_name(self, expected: &'static str) -> Result<Self, XmlError> {
        if self.name == expected {
            Ok(self)
        } else {
            Err(XmlError::UnexpectedRoot {
                expected,
                got: self.name,
            })
        }
    }

    /// The first child with this name, or [`XmlError::Missing`].
    pub(crate) fn required(&self, name: &'static str) -> Result<&Element, XmlError> {
        self.child(name).ok_or(XmlError::Missing(name))
    }

    /// The text of the first child with this name, or [`XmlError::Missing`].
    pub(crate) fn required_text(&self, name: &'static str) -> Result<&str, XmlError> {
        self.required(name).map(|c| c.text.as_str())
    }

    /// The text of the first child with this name, owned.
    pub(crate) fn opt_string(&self, name: &str) -> Option<String> {
        self.child_text(name).map(str::to_owned)
    }

    /// The first child with this name parsed as a number, or [`XmlError::Missing`].
    pub(crate) fn required_num<T: FromStr>(&self, name: &'static str) -> Result<T, XmlError> {
        parse_num(name, self.required_text(name)?)
    }

    /// The first child with this name parsed as a number, if present.
    pub(crate) fn opt_num<T: FromStr>(&self, name: &str) -> Result<Option<T>, XmlError> {
        self.child_text(name)
            .map(|t| parse_num(name, t))
            .transpose()
    }

    /// The first child with this name parsed as a boolean, if present.
    pub(crate) fn opt_bool(&self, name: &str) -> Result<Option<bool>, XmlError> {
        self.child_text(name)
            .map(|t| parse_bool(name, t))
            .transpose()
    }

    /// This attribute parsed as a number, if present.
    pub(crate) fn attr_num<T: FromStr>(&self, name: &str) -> Result<Option<T>, XmlError> {
        self.attr(name)
            .map(|v| parse_num(&format!("{}@{}", self.name, name), v))
            .transpose()
    }

    /// Children as ordered `(name, text)` pairs (for flat, open-ended bodies).
    pub(crate) fn text_pairs(&self) -> Vec<(String, String)> {
        self.children
            .iter()
            .map(|c| (c.name.clone(), c.text.clone()))
            .collect()
    }

    /// Texts of all children with this name.
    pub(crate) fn texts_of(&self, name: &str) -> Vec<String> {
        self.children_named(name).map(|c| c.text.clone()).collect()
    }
}

/// Parses a number, tolerating surrounding whitespace (pretty-printed bodies).
pub(crate) fn parse_num<T: FromStr>(element: &str, text: &str) -> Result<T, XmlError> {
    text.trim()
        .parse()
        .map_err(|_| XmlError::invalid(element, text))
}

/// Parses `true`/`false` (any case) or `1`/`0`.
pub(crate) fn parse_bool(element: &str, text: &str) -> Result<bool, XmlError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("true") || t == "1" {
        Ok(true)
    } else if t.eq_ignore_ascii_case("false") || t == "0" {
        Ok(false)
    } else {
        Err(XmlError::invalid(element, text))
    }
}

/// XML whitespace per the XML spec: the only characters dropped as "whitespace-only" text.
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn malformed(e: impl Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

/// Parses one XML document into an [`Element`] tree.
///
/// UTF-8 only; a leading BOM, whitespace and `<?xml …?>` declaration are skipped, comments and processing
/// instructions ignored, CDATA kept as text; a DOCTYPE, more than [`MAX_DEPTH`] levels or more than
/// [`MAX_ELEMENTS`] elements are rejected. Exactly one root element is required.
pub fn parse_element(input: &[u8]) -> Result<Element, XmlError> {
    let text =
        std::str::from_utf8(input).map_err(|e| XmlError::Malformed(format!("not UTF-8: {e}")))?;
    let text = text.trim_start_matches(is_xml_space);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let text = text.trim_start_matches(is_xml_space);

    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.expand_empty_elements = false;
    config.trim_text(false);

    // Iterative on purpose: an explicit stack keeps hostile nesting from touching the call stack.
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let mut seen_markup = false;

    loop {
        let event = reader.read_event().map_err(malformed)?;
        match event {
            Event::Decl(_) => {
                if seen_markup {
                    return Err(XmlError::Malformed(
                        "XML declaration not at the start".into(),
                    ));
                }
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlError::Malformed("more than one root element".into()));
            }
            Event::Start(start) => {
                let element = open_element(&start, &mut count, stack.len())?;
                stack.push(element);
            }
            Event::Empty(start) => {
                let element = open_element(&start, &mut count, stack.len())?;
                close_element(element, &mut stack, &mut root);
            }
            Event::End(_) => match stack.pop() {
                Some(element) => close_element(element, &mut stack, &mut root),
                None => return Err(XmlError::Malformed("unmatched end tag".into())),
            },
            Event::Text(t) => {
                let unescaped = t.unescape().map_err(malformed)?;
                push_text(&mut stack, &unescaped)?;
            }
            Event::CData(c) => {
                let raw = c.decode().map_err(malformed)?;
                push_text(&mut stack, &raw)?;
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
        seen_markup = true;
    }

    if let Some(open) = stack.last() {
        return Err(XmlError::Malformed(format!(
            "unclosed element <{}>",
            open.name
        )));
    }
    root.ok_or_else(|| XmlError::Malformed("no root element".into()))
}

/// Parses a document and checks its root element's name.
pub(crate) fn parse_root(input: &[u8], expected: &'static str) -> Result<Element, XmlError> {
    parse_element(input)?.expect_name(expected)
}

fn open_element(
    start: &quick_xml::events::BytesStart<'_>,
    count: &mut usize,
    depth: usize,
) -> Result<Element, XmlError> {
    if depth >= MAX_DEPTH {
        return Err(XmlError::TooDeep);
    }
    *count += 1;
    if *count > MAX_ELEMENTS {
        return Err(XmlError::TooManyElements);
    }
    let name = String::from_utf8(start.name().as_ref().to_vec()).map_err(malformed)?;
    // quick-xml reads `< />` as an element with an empty name; a name the writer cannot write
    // back would make the server emit broken XML.
    if !valid_name(&name) {
        return Err(XmlError::Malformed(format!(
            "invalid element name {:?}",
            name.chars().take(MAX_ERROR_VALUE).collect::<String>()
        )));
    }
    let mut attrs = Vec::new();
    for attr in start.attributes().with_checks(true) {
        if attrs.len() == MAX_ATTRIBUTES {
            return Err(XmlError::Malformed(format!(
                "more than {MAX_ATTRIBUTES} attributes on <{name}>"
            )));
        }
        let attr = attr.map_err(malformed)?;
        let key = String::from_utf8(attr.key.as_ref().to_vec()).map_err(malformed)?;
        if !valid_name(&key) {
            return Err(XmlError::Malformed("invalid attribute name".into()));
        }
        let value = attr.unescape_value().map_err(malformed)?.into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// An XML name as far as we need it: starts with a letter, `_` or `:`, then no whitespace or markup.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, '<' | '>' | '/' | '=' | '"' | '\'' | '&')
        })
}

fn close_element(mut element: Element, stack: &mut [Element], root: &mut Option<Element>) {
    if element.text.chars().all(is_xml_space) {
        element.text.clear();
    }
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(open) => {
            open.text.push_str(text);
            Ok(())
        }
        None if text.chars().all(is_xml_space) => Ok(()),
        None => Err(XmlError::Malformed("text outside the root element".into())),
    }
}

/// Escapes text content: `&`, `<` and `>`.
pub fn escape_text(s: &str) -> String {
    escape(s, false)
}

/// Escapes an attribute value: `&`, `<`, `>`, `"` and `'`.
pub fn escape_attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if quotes => out.push_str("&quot;"),
            '\'' if quotes => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A compact XML writer: the building block of every `to_xml`.
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: String,
}

impl XmlWriter {
    /// Creates an empty writer.
    pub fn new() -> Self {
        XmlWriter::default()
    }

    /// Writes `<name>`.
    pub fn open(&mut self, name: &str) {
        self.open_with(name, &[]);
    }

    /// Writes `<name a="v" …>` with escaped attribute values.
    pub fn open_with(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start_tag(name, attrs);
        self.out.push('>');
    }

    /// Writes `</name>`.
    pub fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    /// Writes a self-closing `<name a="v" …/>`.
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start_tag(name, attrs);
        self.out.push_str("/>");
    }

    /// Writes escaped text.
    pub fn text(&mut self, text: &str) {
        self.out.push_str(&escape_text(text));
    }

    /// Writes already-serialised XML as is.
    pub fn raw(&mut self, xml: &str) {
        self.out.push_str(xml);
    }

    /// Writes `<name>text</name>` with escaped text (always both tags, even when empty).
    pub fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        self.text(text);
        self.close(name);
    }

    /// Writes `<name>value</name>` for anything displayable (numbers), escaped.
    pub fn leaf_display(&mut self, name: &str, value: impl Display) {
        self.leaf(name, &value.to_string());
    }

    /// Writes `<name>text</name>` only when the value is present.
    pub fn leaf_opt(&mut self, name: &str, text: Option<&str>) {
        if let Some(text) = text {
            self.leaf(name, text);
        }
    }

    /// Writes `<name>value</name>` only when the value is present.
    pub fn leaf_display_opt<T: Display>(&mut self, name: &str, value: Option<T>) {
        if let Some(value) = value {
            self.leaf_display(name, value);
        }
    }

    /// Writes `<name>` + raw inner XML + `</name>`.
    pub fn leaf_raw(&mut self, name: &str, inner: &str) {
        self.open(name);
        self.raw(inner);
        self.close(name);
    }

    /// Returns the XML written so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn start_tag(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            self.out.push_str(&escape_attr(v));
            self.out.push('"');
        }
    }
}

/// Writes `<name>` + the pairs as `<k>v</k>` (escaped) + `</name>`, or `<name/>` when there are none.
pub(crate) fn write_text_pairs(w: &mut XmlWriter, name: &str, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        w.empty(name, &[]);
        return;
    }
    w.open(name);
    for (k, v) in pairs {
        w.leaf(k, v);
    }
    w.close(name);
}
