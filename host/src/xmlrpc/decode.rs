//! Bytes to [`MethodCall`]s and responses.
//!
//! The document is first read into a flat list of tokens (open, close, text)
//! by quick-xml, then parsed by recursive descent. Document type
//! declarations are refused outright, so no entity is ever defined, let alone
//! expanded; only XML's predefined entities and character references are.

use super::{Fault, MethodCall, Value};
use base64::Engine as _;
use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use std::borrow::Cow;

/// Values nested deeper than this are refused rather than recursed into.
const MAX_DEPTH: usize = 64;

/// Why a document is not a method call (or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not well-formed XML (or not UTF-8, or with a DTD): fault -32700.
    NotWellFormed(String),
    /// Well-formed, but not an XML-RPC document: fault -32600.
    Invalid(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NotWellFormed(why) => write!(f, "XML not well-formed: {why}"),
            ParseError::Invalid(why) => write!(f, "not an XML-RPC document: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn invalid<T>(why: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Invalid(why.into()))
}

/// Decodes a `<methodCall>`.
pub fn parse_call(body: &[u8]) -> Result<MethodCall, ParseError> {
    let mut p = Parser::new(body)?;
    p.open("methodCall")?;
    p.open("methodName")?;
    let name = p.text()?;
    p.close("methodName")?;
    if name.trim().is_empty() {
        return invalid("empty methodName");
    }
    let mut params = Vec::new();
    if p.peek_open() == Some("params") {
        p.open("params")?;
        while p.peek_open() == Some("param") {
            p.open("param")?;
            params.push(p.value(0)?);
            p.close("param")?;
        }
        p.close("params")?;
    }
    p.close("methodCall")?;
    p.end()?;
    Ok(MethodCall {
        name: name.trim().to_owned(),
        params,
    })
}

/// Decodes a `<methodResponse>`: the returned value, or the fault.
pub fn parse_response(body: &[u8]) -> Result<Result<Value, Fault>, ParseError> {
    let mut p = Parser::new(body)?;
    p.open("methodResponse")?;
    let result = match p.peek_open() {
        Some("params") => {
            p.open("params")?;
            p.open("param")?;
            let value = p.value(0)?;
            p.close("param")?;
            p.close("params")?;
            Ok(value)
        }
        Some("fault") => {
            p.open("fault")?;
            let value = p.value(0)?;
            p.close("fault")?;
            let code = value.member("faultCode").and_then(Value::as_i64);
            let message = value.member("faultString").and_then(Value::as_str);
            match (code.and_then(|c| i32::try_from(c).ok()), message) {
                (Some(code), Some(message)) => Err(Fault::new(code, message)),
                _ => return invalid("fault without an int faultCode and a string faultString"),
            }
        }
        _ => return invalid("methodResponse holds neither params nor fault"),
    };
    p.close("methodResponse")?;
    p.end()?;
    Ok(result)
}

/// A token of the document; text borrowed from it where it can be.
#[derive(Debug)]
enum Token<'a> {
    Open(Cow<'static, str>),
    Close,
    Text(Cow<'a, str>),
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(body: &'a [u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| ParseError::NotWellFormed(format!("not UTF-8: {e}")))?;
        Ok(Self {
            tokens: tokenize(text)?,
            pos: 0,
        })
    }

    /// Skips text that is only white space between elements.
    fn skip_space(&mut self) {
        while let Some(Token::Text(t)) = self.tokens.get(self.pos) {
            if !t.trim().is_empty() {
                break;
            }
            self.pos += 1;
        }
    }

    fn peek_open(&mut self) -> Option<&str> {
        self.skip_space();
        match self.tokens.get(self.pos) {
            Some(Token::Open(name)) => Some(name),
            _ => None,
        }
    }

    fn open(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_space();
        match self.tokens.get(self.pos) {
            Some(Token::Open(n)) if n == name => {
                self.pos += 1;
                Ok(())
            }
            other => invalid(format!("expected <{name}>, found {}", describe(other))),
        }
    }

    fn close(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_space();
        match self.tokens.get(self.pos) {
            Some(Token::Close) => {
                self.pos += 1;
                Ok(())
            }
            other => invalid(format!("expected </{name}>, found {}", describe(other))),
        }
    }

    /// The text content of the element just opened (empty if none).
    fn text(&mut self) -> Result<String, ParseError> {
        match self.tokens.get_mut(self.pos) {
            Some(Token::Text(t)) => {
                let t = std::mem::take(t).into_owned();
                self.pos += 1;
                Ok(t)
            }
            Some(Token::Close) => Ok(String::new()),
            _ => invalid(format!(
                "expected text, found {}",
                describe(self.tokens.get(self.pos))
            )),
        }
    }

    fn end(&mut self) -> Result<(), ParseError> {
        self.skip_space();
        match self.tokens.get(self.pos) {
            None => Ok(()),
            other => invalid(format!("unexpected {} after the document", describe(other))),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return invalid(format!("values nested deeper than {MAX_DEPTH}"));
        }
        self.open("value")?;
        // A bare `<value>text</value>` is a string, white space included.
        let value = match self.tokens.get(self.pos) {
            Some(Token::Close) => Value::String(String::new()),
            Some(Token::Text(t)) if !t.trim().is_empty() => Value::String(self.text()?),
            Some(Token::Text(_))
                if !matches!(self.tokens.get(self.pos + 1), Some(Token::Open(_))) =>
            {
                Value::String(self.text()?)
            }
            _ => self.typed(depth)?,
        };
        self.close("value")?;
        Ok(value)
    }

    fn typed(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.skip_space();
        let Some(Token::Open(tag)) = self.tokens.get(self.pos) else {
            return invalid(format!(
                "expected a value type, found {}",
                describe(self.tokens.get(self.pos))
            ));
        };
        // Apache's extension namespace spells some types `ex:i8`, `ex:nil`.
        let tag = tag.strip_prefix("ex:").unwrap_or(tag).to_owned();
        self.pos += 1;
        let value = match tag.as_str() {
            "struct" => return self.members(depth),
            "array" => return self.array(depth),
            "nil" => Value::Nil,
            _ => {
                let text = self.text()?;
                scalar(&tag, text)?
            }
        };
        self.close(&tag)?;
        Ok(value)
    }

    fn members(&mut self, depth: usize) -> Result<Value, ParseError> {
        let mut members = Vec::new();
        while self.peek_open() == Some("member") {
            self.open("member")?;
            self.open("name")?;
            let name = self.text()?;
            self.close("name")?;
            let value = self.value(depth + 1)?;
            self.close("member")?;
            members.push((name, value));
        }
        self.close("struct")?;
        Ok(Value::Struct(members))
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.open("data")?;
        let mut items = Vec::new();
        while self.peek_open() == Some("value") {
            items.push(self.value(depth + 1)?);
        }
        self.close("data")?;
        self.close("array")?;
        Ok(Value::Array(items))
    }
}

/// A scalar of type `tag` from its text.
fn scalar(tag: &str, text: String) -> Result<Value, ParseError> {
    let trimmed = text.trim();
    let bad = |what: &str| invalid(format!("invalid {what} {trimmed:?}"));
    Ok(match tag {
        "string" => Value::String(text),
        "int" | "i4" | "i2" | "i1" => match trimmed.parse() {
            Ok(i) => Value::Int(i),
            Err(_) => return bad("int"),
        },
        "i8" => match trimmed.parse() {
            Ok(i) => Value::I8(i),
            Err(_) => return bad("i8"),
        },
        "boolean" => match trimmed {
            "0" => Value::Bool(false),
            "1" => Value::Bool(true),
            _ => return bad("boolean"),
        },
        "double" => match trimmed.parse() {
            Ok(d) => Value::Double(d),
            Err(_) => return bad("double"),
        },
        "dateTime.iso8601" => Value::DateTime(trimmed.to_owned()),
        "base64" => {
            let compact: String = trimmed.split_ascii_whitespace().collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(bytes) => Value::Base64(bytes),
                Err(_) => return bad("base64"),
            }
        }
        other => return invalid(format!("unknown value type <{other}>")),
    })
}

fn describe(token: Option<&Token<'_>>) -> String {
    match token {
        None => "the end of the document".into(),
        Some(Token::Open(name)) => format!("<{name}>"),
        Some(Token::Close) => "a closing tag".into(),
        Some(Token::Text(t)) => format!("text {:?}", t.chars().take(40).collect::<String>()),
    }
}

/// The elements of XML-RPC (and Apache's `ex:` spellings), named without
/// an allocation each.
const TAGS: &[&str] = &[
    "methodCall",
    "methodName",
    "methodResponse",
    "params",
    "param",
    "value",
    "string",
    "int",
    "i4",
    "i8",
    "i2",
    "i1",
    "boolean",
    "double",
    "dateTime.iso8601",
    "base64",
    "struct",
    "member",
    "name",
    "array",
    "data",
    "nil",
    "fault",
    "ex:i8",
    "ex:nil",
];

/// A start tag's name.
fn tag_name(name: &str) -> Cow<'static, str> {
    match TAGS.iter().find(|tag| **tag == name) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.to_owned()),
    }
}

/// The document as open/close/text tokens, with adjacent text, CDATA and
/// references merged into one text token.
fn tokenize(text: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let not_well_formed = |e: &dyn std::fmt::Display| ParseError::NotWellFormed(e.to_string());
    let mut reader = Reader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    fn push_text<'a>(tokens: &mut Vec<Token<'a>>, s: Cow<'a, str>) {
        match tokens.last_mut() {
            Some(Token::Text(t)) => t.to_mut().push_str(&s),
            _ => tokens.push(Token::Text(s)),
        }
    }
    loop {
        let event = reader.read_event().map_err(|e| not_well_formed(&e))?;
        match event {
            Event::Start(e) => {
                if depth == 0 && seen_root {
                    return Err(ParseError::NotWellFormed(
                        "more than one root element".into(),
                    ));
                }
                seen_root = true;
                depth += 1;
                tokens.push(Token::Open(tag_name(e.name().as_ref())));
            }
            Event::End(_) => {
                depth -= 1;
                tokens.push(Token::Close);
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                if depth == 0 && !content.trim().is_empty() {
                    return Err(ParseError::NotWellFormed(
                        "text outside the root element".into(),
                    ));
                }
                push_text(&mut tokens, content);
            }
            Event::CData(c) => push_text(&mut tokens, c.into_inner()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| not_well_formed(&e))? {
                    Some(c) => c.to_string(),
                    None => resolve_predefined_entity(&r)
                        .ok_or_else(|| {
                            ParseError::NotWellFormed(format!("undefined entity &{};", &*r))
                        })?
                        .to_owned(),
                };
                if depth == 0 {
                    return Err(ParseError::NotWellFormed(
                        "reference outside the root element".into(),
                    ));
                }
                push_text(&mut tokens, Cow::Owned(resolved));
            }
            Event::DocType(_) => {
                return Err(ParseError::NotWellFormed(
                    "document type declarations (DTDs) are not accepted".into(),
                ));
            }
            Event::Empty(_) => unreachable!("expand_empty_elements is set"),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Err(ParseError::NotWellFormed("no root element".into()));
    }
    if depth != 0 {
        return Err(ParseError::NotWellFormed("unclosed element".into()));
    }
    Ok(tokens)
}
