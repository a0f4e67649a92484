//! A YAML document as a tree of nodes that remember where they stand in the file, so
//! every error about topology.yaml, from serde or from the compile step, can name its
//! line and column. Also `${VAR:-default}` substitution and a serde deserializer over
//! the tree.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Pos {
    fn from_marker(mark: Marker) -> Self {
        Pos {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: NodeKind,
    /// Where it starts.
    pub pos: Pos,
}

/// The kinds of node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar with its text; `plain` is false for quoted and block scalars, which are
    /// always strings.
    Scalar {
        /// The text after unescaping.
        text: String,
        /// Whether the scalar was written without quotes (so `4` is a number).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, keys as written.
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax error or a substitution error, with its position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

impl Node {
    /// Parses one YAML document. An empty document is an empty mapping.
    pub fn parse(text: &str) -> Result<Node, YamlError> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, false).map_err(|e| YamlError {
            pos: Pos::from_marker(*e.marker()),
            message: e.info().to_string(),
        })?;
        if let Some(error) = builder.error {
            return Err(error);
        }
        Ok(builder.root.unwrap_or(Node {
            kind: NodeKind::Map(Vec::new()),
            pos: Pos { line: 1, column: 1 },
        }))
    }

    /// The node at a path of mapping keys and sequence indexes (as decimal strings).
    pub fn get_path<S: AsRef<str>>(&self, path: &[S]) -> Option<&Node> {
        let mut node = self;
        for step in path {
            node = node.child(step.as_ref())?;
        }
        Some(node)
    }

    /// The position of the deepest node that exists along `path`: a missing field is
    /// reported where its parent stands.
    pub fn pos_of<S: AsRef<str>>(&self, path: &[S]) -> Pos {
        let mut node = self;
        for step in path {
            match node.child(step.as_ref()) {
                Some(child) => node = child,
                None => break,
            }
        }
        node.pos
    }

    /// The position of a mapping key (rather than its value) along `path`.
    pub fn key_pos<S: AsRef<str>>(&self, path: &[S]) -> Pos {
        let Some((last, parent)) = path.split_last() else {
            return self.pos;
        };
        match self.get_path(parent).map(|n| &n.kind) {
            Some(NodeKind::Map(entries)) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(last.as_ref()))
                .map(|(k, _)| k.pos)
                .unwrap_or_else(|| self.pos_of(path)),
            _ => self.pos_of(path),
        }
    }

    fn child(&self, step: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(step))
                .map(|(_, v)| v),
            NodeKind::Seq(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
            NodeKind::Scalar { .. } => None,
        }
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Replaces `${VAR}` and `${VAR:-default}` in every scalar (keys included) with the
    /// value `lookup` gives, collecting an error for each unset variable without a
    /// default. `$${` stands for a literal `${`.
    pub fn substitute(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<YamlError>,
    ) {
        match &mut self.kind {
            NodeKind::Scalar { text, .. } => {
                if text.contains('$') {
                    match substitute_text(text, lookup) {
                        Ok(replaced) => *text = replaced,
                        Err(message) => errors.push(YamlError {
                            pos: self.pos,
                            message,
                        }),
                    }
                }
            }
            NodeKind::Seq(items) => items.iter_mut().for_each(|n| n.substitute(lookup, errors)),
            NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                k.substitute(lookup, errors);
                v.substitute(lookup, errors);
            }),
        }
    }

    /// Deserializes the node into `T`. On failure the error carries the dotted path
    /// of the offending value and its position.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, DeError> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(self, &mut track);
        T::deserialize(de).map_err(|mut error| {
            let path = track.path();
            error.path = path.to_string();
            if error.pos.is_none() {
                let steps: Vec<String> = path
                    .iter()
                    .filter_map(|seg| match seg {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                        serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
                error.pos = Some(self.pos_of(&steps));
            }
            error
        })
    }
}

fn substitute_text(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name {name:?} in {text:?}"));
            }
            match lookup(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(&value),
                None => match default {
                    Some(default) => out.push_str(default),
                    None => {
                        return Err(format!(
                            "environment variable {name} is not set and has no default (write ${{{name}:-default}})"
                        ));
                    }
                },
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>, usize)>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<YamlError>,
}

impl Builder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some((parent, pending_key, _)) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match &mut parent.kind {
            NodeKind::Seq(items) => items.push(node),
            NodeKind::Map(entries) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let duplicate = entries
                        .iter()
                        .any(|(k, _)| k.as_str().is_some() && k.as_str() == key.as_str());
                    if duplicate && self.error.is_none() {
                        self.error = Some(YamlError {
                            pos: key.pos,
                            message: format!(
                                "duplicate key {:?}",
                                key.as_str().unwrap_or_default()
                            ),
                        });
                    }
                    entries.push((key, node));
                }
            },
            NodeKind::Scalar { .. } => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                self.push_value(
                    Node {
                        kind: NodeKind::Scalar { text, plain },
                        pos,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    kind: NodeKind::Seq(Vec::new()),
                    pos,
                },
                None,
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    kind: NodeKind::Map(Vec::new()),
                    pos,
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop() {
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(node) => Node {
                        kind: node.kind.clone(),
                        pos,
                    },
                    None => Node {
                        kind: NodeKind::Scalar {
                            text: String::new(),
                            plain: true,
                        },
                        pos,
                    },
                };
                self.push_value(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// A serde error while reading the tree: its message, the dotted path of the value
/// and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// What serde said, for example `unknown field "stroes", expected one of ...`.
    pub message: String,
    /// The dotted path, for example `processors.order-saga.stores[0]`.
    pub path: String,
    /// Where, when known.
    pub pos: Option<Pos>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            path: String::new(),
            pos: None,
        }
    }
}

trait At<T> {
    fn at(self, pos: Pos) -> Result<T, DeError>;
}

impl<T> At<T> for Result<T, DeError> {
    fn at(self, pos: Pos) -> Result<T, DeError> {
        self.map_err(|mut e| {
            e.pos.get_or_insert(pos);
            e
        })
    }
}

enum Plain<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

fn classify(node: &Node) -> Option<Plain<'_>> {
    let NodeKind::Scalar { text, plain } = &node.kind else {
        return None;
    };
    if !plain {
        return Some(Plain::Str(text));
    }
    Some(match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Plain::Null,
        "true" | "True" | "TRUE" => Plain::Bool(true),
        "false" | "False" | "FALSE" => Plain::Bool(false),
        t => {
            if let Ok(i) = t.parse::<i64>() {
                Plain::Int(i)
            } else if let Ok(u) = t.parse::<u64>() {
                Plain::UInt(u)
            } else if t.contains(['.', 'e', 'E'])
                && !t.chars().any(|c| c.is_alphabetic() && c != 'e' && c != 'E')
                && let Ok(f) = t.parse::<f64>()
            {
                Plain::Float(f)
            } else {
                Plain::Str(text)
            }
        }
    })
}

macro_rules! forward_any {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.deserialize_any(visitor)
        })*
    };
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.kind {
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            }),
            NodeKind::Scalar { .. } => match classify(self) {
                Some(Plain::Null) => visitor.visit_unit(),
                Some(Plain::Bool(b)) => visitor.visit_bool(b),
                Some(Plain::Int(i)) => visitor.visit_i64(i),
                Some(Plain::UInt(u)) => visitor.visit_u64(u),
                Some(Plain::Float(f)) => visitor.visit_f64(f),
                Some(Plain::Str(s)) => visitor.visit_borrowed_str(s),
                None => visitor.visit_unit(),
            },
        };
        result.at(self.pos)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Every scalar is text in YAML: `version: 1` is a fine string.
        match &self.kind {
            NodeKind::Scalar { text, .. } if !self.is_null() => {
                visitor.visit_borrowed_str(text.as_str()).at(self.pos)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            visitor.visit_none().at(self.pos)
        } else {
            visitor.visit_some(self).at(self.pos)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self).at(self.pos)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => visitor
                .visit_enum(text.as_str().into_deserializer())
                .at(self.pos),
            NodeKind::Map(entries) if entries.len() == 1 => visitor
                .visit_enum(EnumAccess {
                    key: &entries[0].0,
                    value: &entries[0].1,
                })
                .at(self.pos),
            _ => Err(de::Error::custom(
                "expected a name, or a mapping with one key naming the variant",
            ))
            .at(self.pos),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if self.is_null() {
            // `key:` with nothing after it reads as an empty mapping.
            return visitor
                .visit_map(MapAccess {
                    entries: [].iter(),
                    value: None,
                })
                .at(self.pos);
        }
        self.deserialize_any(visitor)
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(node).map(Some).at(node.pos),
            None => Ok(None),
        }
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Node, Node)>,
    value: Option<&'de Node>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some).at(key.pos)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value without a key"))?;
        seed.deserialize(value).at(value.pos)
    }
}

struct EnumAccess<'de> {
    key: &'de Node,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = &'de Node;

    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, &'de Node), DeError> {
        let variant = seed.deserialize(self.key).at(self.key.pos)?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for &'de Node {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Topic {
        partitions: u32,
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn positions_are_one_based() {
        let node = Node::parse("a:\n  b: 1\n  c: [x, y]\n").unwrap();
        assert_eq!(node.pos_of(&["a", "b"]), Pos { line: 2, column: 6 });
        assert_eq!(node.key_pos(&["a", "c"]), Pos { line: 3, column: 3 });
        assert_eq!(
            node.pos_of(&["a", "c", "1"]),
            Pos {
                line: 3,
                column: 10
            }
        );
    }

    #[test]
    fn unknown_field_names_its_line_and_path() {
        let node = Node::parse("t:\n  partitions: 3\n  partitons: 4\n").unwrap();
        let err = node
            .deserialize::<std::collections::BTreeMap<String, Topic>>()
            .unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 3, column: 3 }));
        assert_eq!(err.path, "t.partitons");
        assert!(
            err.message.contains("unknown field `partitons`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn wrong_type_names_the_value() {
        let node = Node::parse("t:\n  partitions: many\n").unwrap();
        let err = node
            .deserialize::<std::collections::BTreeMap<String, Topic>>()
            .unwrap_err();
        assert_eq!(
            err.pos,
            Some(Pos {
                line: 2,
                column: 15
            })
        );
        assert_eq!(err.path, "t.partitions");
    }

    #[test]
    fn substitution_uses_env_then_default() {
        let mut node = Node::parse("p: ${PARTS:-4}\nq: \"${NAME}-x\"\nr: $${LIT}\n").unwrap();
        let mut errors = Vec::new();
        node.substitute(
            &|name| (name == "NAME").then(|| "orders".to_string()),
            &mut errors,
        );
        assert!(errors.is_empty());
        assert_eq!(node.get_path(&["p"]).unwrap().as_str(), Some("4"));
        assert_eq!(node.get_path(&["q"]).unwrap().as_str(), Some("orders-x"));
        assert_eq!(node.get_path(&["r"]).unwrap().as_str(), Some("${LIT}"));
        // A substituted plain scalar is still a number.
        #[derive(Deserialize)]
        struct P {
            p: u32,
        }
        #[derive(Deserialize)]
        struct Wrap {
            #[serde(flatten)]
            p: P,
            #[serde(flatten)]
            _rest: std::collections::BTreeMap<String, String>,
        }
        let w: Wrap = node.deserialize().unwrap();
        assert_eq!(w.p.p, 4);
    }

    #[test]
    fn unset_variable_without_default_is_an_error_at_its_scalar() {
        let mut node = Node::parse("a: 1\nb: ${MISSING}\n").unwrap();
        let mut errors = Vec::new();
        node.substitute(&|_| None, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pos, Pos { line: 2, column: 4 });
        assert!(errors[0].message.contains("MISSING"));
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_positions() {
        let err = Node::parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        let err = Node::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err}");
    }
}
