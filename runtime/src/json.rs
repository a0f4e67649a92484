//! JSON and Avro values of a topic's schema, both ways, for `orderflow produce` and
//! `orderflow consume`. JSON in is checked against the schema field by field, and an
//! error names the path (`items[0].quantity: expected an int, got "two"`). A topic
//! whose schema is a union of records takes either `{"<RecordName>": {…}}` (the
//! record named, short or full name) or the bare record, which is matched against the
//! union's records in order; `consume` prints the named form, so its output feeds
//! `produce` unchanged. Optional fields (`["null", T]`) are plain values or `null`,
//! and a missing field takes the schema's default.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UnionSchema};
use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

/// A JSON value that does not fit the schema, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct JsonError {
    /// Where in the value (`items[0].quantity`); empty for the value itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The named types of a schema, so references can be followed.
struct Names<'a> {
    by_name: HashMap<Name, &'a Schema>,
}

impl<'a> Names<'a> {
    fn of(schema: &'a Schema) -> Self {
        let mut by_name = HashMap::new();
        collect(schema, &mut by_name);
        Names { by_name }
    }

    fn resolve(&self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.by_name.get(name).copied().unwrap_or(schema),
            other => other,
        }
    }
}

fn collect<'a>(schema: &'a Schema, out: &mut HashMap<Name, &'a Schema>) {
    match schema {
        Schema::Record(r) => {
            out.insert(r.name.clone(), schema);
            for f in &r.fields {
                collect(&f.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.insert(e.name.clone(), schema);
        }
        Schema::Fixed(f) => {
            out.insert(f.name.clone(), schema);
        }
        Schema::Union(u) => {
            for v in u.variants() {
                collect(v, out);
            }
        }
        Schema::Array(a) => collect(&a.items, out),
        Schema::Map(m) => collect(&m.types, out),
        _ => {}
    }
}

/// The Avro value of `json` under `schema` (the topic's value schema), ready for
/// [`crate::wire::TopicSerde::encode_value`].
pub fn to_avro(schema: &Schema, json: &Json) -> Result<Value, JsonError> {
    let names = Names::of(schema);
    if let Schema::Union(union) = schema
        && union
            .variants()
            .iter()
            .all(|v| record_name(names.resolve(v)).is_some())
    {
        return top_level_union(union, json, &names);
    }
    convert(schema, json, &names, &mut String::new())
}

fn record_name(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Record(RecordSchema { name, .. }) => Some(name),
        _ => None,
    }
}

fn top_level_union(
    union: &UnionSchema,
    json: &Json,
    names: &Names<'_>,
) -> Result<Value, JsonError> {
    // {"RecordName": {...}}: the record named.
    if let Json::Object(map) = json
        && map.len() == 1
        && let Some((tag, inner)) = map.iter().next()
    {
        for (index, variant) in union.variants().iter().enumerate() {
            let resolved = names.resolve(variant);
            if let Some(name) = record_name(resolved)
                && (name.name() == tag || name.fullname(None) == *tag)
            {
                let mut path = String::new();
                let value = convert(resolved, inner, names, &mut path)?;
                return Ok(Value::Union(index as u32, Box::new(value)));
            }
        }
    }
    // The bare record: the first of the union's records it fits.
    let mut reasons = Vec::new();
    for (index, variant) in union.variants().iter().enumerate() {
        let resolved = names.resolve(variant);
        let mut path = String::new();
        match convert(resolved, json, names, &mut path) {
            Ok(value) => return Ok(Value::Union(index as u32, Box::new(value))),
            Err(e) => {
                let name = record_name(resolved).map_or_else(String::new, |n| n.name().to_string());
                reasons.push(format!("not a {name} ({e})"));
            }
        }
    }
    Err(JsonError {
        path: String::new(),
        message: format!(
            "fits none of the topic's records: {}; name the record as {{\"<RecordName>\": {{...}}}}",
            reasons.join("; ")
        ),
    })
}

fn fail(path: &str, message: impl Into<String>) -> JsonError {
    JsonError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn describe(json: &Json) -> String {
    let text = json.to_string();
    if text.len() > 40 {
        format!(
            "{}…",
            &text[..text.char_indices().nth(40).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

fn convert(
    schema: &Schema,
    json: &Json,
    names: &Names<'_>,
    path: &mut String,
) -> Result<Value, JsonError> {
    let schema = names.resolve(schema);
    let expected =
        |path: &str, what: &str| fail(path, format!("expected {what}, got {}", describe(json)));
    match schema {
        Schema::Null => match json {
            Json::Null => Ok(Value::Null),
            _ => Err(expected(path, "null")),
        },
        Schema::Boolean => json
            .as_bool()
            .map(Value::Boolean)
            .ok_or_else(|| expected(path, "a boolean")),
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let n = json
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| expected(path, "an int (32-bit integer)"))?;
            Ok(match schema {
                Schema::Date => Value::Date(n),
                Schema::TimeMillis => Value::TimeMillis(n),
                _ => Value::Int(n),
            })
        }
        Schema::Long
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimeMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => {
            let n = json
                .as_i64()
                .ok_or_else(|| expected(path, "a long (64-bit integer)"))?;
            Ok(match schema {
                Schema::TimestampMillis => Value::TimestampMillis(n),
                Schema::TimestampMicros => Value::TimestampMicros(n),
                Schema::TimeMicros => Value::TimeMicros(n),
                Schema::LocalTimestampMillis => Value::LocalTimestampMillis(n),
                Schema::LocalTimestampMicros => Value::LocalTimestampMicros(n),
                _ => Value::Long(n),
            })
        }
        Schema::Float => json
            .as_f64()
            .map(|f| Value::Float(f as f32))
            .ok_or_else(|| expected(path, "a number")),
        Schema::Double => json
            .as_f64()
            .map(Value::Double)
            .ok_or_else(|| expected(path, "a number")),
        Schema::String | Schema::Uuid(_) => json
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| expected(path, "a string")),
        Schema::Bytes => json
            .as_str()
            .map(|s| Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()))
            .ok_or_else(|| expected(path, "a string of bytes")),
        Schema::Enum(e) => {
            let symbol = json
                .as_str()
                .ok_or_else(|| expected(path, "an enum symbol (a string)"))?;
            let index = e.symbols.iter().position(|s| s == symbol).ok_or_else(|| {
                fail(
                    path,
                    format!("{symbol:?} is not one of {}", e.symbols.join(", ")),
                )
            })?;
            Ok(Value::Enum(index as u32, symbol.to_string()))
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| expected(path, "an array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(convert(&a.items, item, names, path)?);
                path.truncate(len);
            }
            Ok(Value::Array(out))
        }
        Schema::Map(m) => {
            let map = json
                .as_object()
                .ok_or_else(|| expected(path, "an object"))?;
            let mut out = HashMap::with_capacity(map.len());
            for (k, v) in map {
                let len = path.len();
                path.push_str(&format!("[{k:?}]"));
                out.insert(k.clone(), convert(&m.types, v, names, path)?);
                path.truncate(len);
            }
            Ok(Value::Map(out))
        }
        Schema::Union(u) => {
            // An optional value: null, or the first other branch it fits.
            if json.is_null()
                && let Some(i) = u.variants().iter().position(|v| matches!(v, Schema::Null))
            {
                return Ok(Value::Union(i as u32, Box::new(Value::Null)));
            }
            let mut first_error = None;
            for (i, variant) in u.variants().iter().enumerate() {
                if matches!(variant, Schema::Null) {
                    continue;
                }
                match convert(variant, json, names, path) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(first_error.unwrap_or_else(|| fail(path, "expected null")))
        }
        Schema::Record(r) => {
            let map = json
                .as_object()
                .ok_or_else(|| expected(path, "an object"))?;
            record(r, map, names, path)
        }
        other => Err(fail(
            path,
            format!("schema type {other:?} is not supported in JSON lines"),
        )),
    }
}

fn record(
    r: &RecordSchema,
    map: &Map<String, Json>,
    names: &Names<'_>,
    path: &mut String,
) -> Result<Value, JsonError> {
    if let Some(unknown) = map.keys().find(|k| !r.fields.iter().any(|f| &f.name == *k)) {
        let at = if path.is_empty() {
            unknown.clone()
        } else {
            format!("{path}.{unknown}")
        };
        return Err(fail(
            &at,
            format!("{} has no field {unknown:?}", r.name.name()),
        ));
    }
    let mut fields = Vec::with_capacity(r.fields.len());
    for field in &r.fields {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&field.name);
        let value = match map.get(&field.name) {
            Some(json) => convert(&field.schema, json, names, path)?,
            None => match &field.default {
                Some(default) => convert(&field.schema, default, names, path)?,
                None => return Err(fail(path, "missing (the field has no default)")),
            },
        };
        path.truncate(len);
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}

/// The JSON of an Avro value of `schema`: records as objects, optional values plain,
/// enums as their symbol; a value of a top-level union of records as
/// `{"<RecordName>": {…}}`, which [`to_avro`] reads back.
pub fn from_avro(schema: &Schema, value: &Value) -> Json {
    let names = Names::of(schema);
    match (schema, value) {
        (Schema::Union(union), Value::Union(index, inner)) => {
            let variant = union
                .variants()
                .get(*index as usize)
                .map(|v| names.resolve(v));
            match variant.and_then(record_name) {
                Some(name) => {
                    let mut map = Map::new();
                    map.insert(name.name().to_string(), plain(inner));
                    Json::Object(map)
                }
                None => plain(inner),
            }
        }
        _ => plain(value),
    }
}

fn plain(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => Json::from(*n),
        Value::Long(n)
        | Value::TimestampMillis(n)
        | Value::TimestampMicros(n)
        | Value::TimeMicros(n)
        | Value::LocalTimestampMillis(n)
        | Value::LocalTimestampMicros(n) => Json::from(*n),
        Value::Float(f) => Json::from(f64::from(*f)),
        Value::Double(f) => Json::from(*f),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::String(b.iter().map(|c| char::from(*c)).collect())
        }
        Value::Union(_, inner) => plain(inner),
        Value::Array(items) => Json::Array(items.iter().map(plain).collect()),
        Value::Map(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        Value::Record(fields) => {
            Json::Object(fields.iter().map(|(k, v)| (k.clone(), plain(v))).collect())
        }
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    const UNION: &str = r#"[
      {"type": "record", "name": "A", "namespace": "t", "fields": [
        {"name": "id", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["X", "Y"]}},
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
          {"name": "quantity", "type": "int"}]}}},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
      ]},
      {"type": "record", "name": "B", "namespace": "t", "fields": [
        {"name": "id", "type": "string"},
        {"name": "kind", "type": "t.Kind"}
      ]}
    ]"#;

    #[test]
    fn records_of_a_union_by_name_or_by_shape_and_back() {
        let s = schema(UNION);
        let a = json!({"id": "1", "kind": "X", "items": [{"quantity": 2}], "at": 5});
        let value = to_avro(&s, &a).unwrap();
        assert!(value.validate(&s), "{value:?}");
        let back = from_avro(&s, &value);
        assert_eq!(
            back,
            json!({"A": {"id": "1", "kind": "X", "items": [{"quantity": 2}], "note": null, "at": 5}})
        );
        assert_eq!(
            to_avro(&s, &back).unwrap(),
            value,
            "consume's output produces the same value"
        );
        let b = to_avro(&s, &json!({"t.B": {"id": "2", "kind": "Y"}})).unwrap();
        assert!(matches!(b, Value::Union(1, _)));
        let bare_b = to_avro(&s, &json!({"id": "2", "kind": "Y"})).unwrap();
        assert_eq!(bare_b, b);
    }

    #[test]
    fn errors_name_the_path() {
        let s = schema(UNION);
        let e = to_avro(
            &s,
            &json!({"A": {"id": "1", "kind": "X", "items": [{"quantity": "two"}], "at": 5}}),
        )
        .unwrap_err();
        assert_eq!(e.path, "items[0].quantity");
        assert!(e.message.contains("expected an int"), "{e}");
        let e = to_avro(
            &s,
            &json!({"A": {"id": "1", "kind": "Z", "items": [], "at": 5}}),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "kind: \"Z\" is not one of X, Y");
        let e = to_avro(&s, &json!({"A": {"id": "1", "kind": "X", "items": []}})).unwrap_err();
        assert_eq!(e.to_string(), "at: missing (the field has no default)");
        let e = to_avro(
            &s,
            &json!({"A": {"id": "1", "kind": "X", "items": [], "at": 1, "x": 1}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("has no field \"x\""), "{e}");
        let e = to_avro(&s, &json!({"nothing": true})).unwrap_err();
        assert!(e.message.contains("fits none"), "{e}");
    }
}
