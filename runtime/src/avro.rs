//! The bridge between Rust record types and Avro values: every record that crosses a
//! topic implements [`AvroRecord`], so the schema in `schemas/` and the Rust type are
//! checked against each other whenever a value is encoded or decoded.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, NamespaceRef, ResolvedSchema};
use apache_avro::types::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a Rust value and an Avro value did not fit each other.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// The value does not match the schema (a missing field, a wrong type, an unknown
    /// enum symbol).
    #[error("value does not match schema {schema}: {message}")]
    Mismatch {
        /// The full name of the schema (or its type when it has no name).
        schema: String,
        /// What apache-avro said.
        message: String,
    },
    /// A union schema has no variant of the given name.
    #[error("union has no variant named {0}")]
    NoSuchVariant(String),
    /// The Avro bytes could not be read with the schema.
    #[error("cannot read Avro body: {0}")]
    Body(String),
}

/// A record type carried on a topic. The default methods go through serde and resolve
/// the value against the topic's schema; a top-level union (a topic carrying several
/// record types) implements [`AvroRecord::to_avro`] with [`union_variant`] so the
/// variant is chosen by name, never by shape.
pub trait AvroRecord: Serialize + DeserializeOwned + Sized {
    /// The Avro value of `self`, resolved against `schema` (the topic's schema).
    fn to_avro(&self, schema: &Schema) -> Result<Value, AvroError> {
        let value = apache_avro::to_value(self).map_err(|e| mismatch(schema, e))?;
        value.resolve(schema).map_err(|e| mismatch(schema, e))
    }

    /// Appends `self` to `out` as an Avro body of `schema` (no framing), straight
    /// from serde with the schema guiding every field (no intermediate [`Value`],
    /// no resolution pass): the path every produced record takes. Writes the same
    /// bytes as [`write_body`] of [`AvroRecord::to_avro`]; a top-level union
    /// implements it with [`union_encode`], choosing the branch by name.
    fn encode_body(&self, schema: &Schema, out: &mut Vec<u8>) -> Result<(), AvroError> {
        encode_serde(schema, self, out)
    }

    /// The Rust value of an Avro value already resolved against the topic's schema.
    fn from_avro(value: &Value) -> Result<Self, AvroError> {
        apache_avro::from_value(value).map_err(|e| AvroError::Mismatch {
            schema: std::any::type_name::<Self>().to_string(),
            message: e.to_string(),
        })
    }
}

/// The value of `record` as the variant named `full_name` (for example
/// `orderflow.PlaceOrder`) of the union `schema`.
pub fn union_variant<T: Serialize>(
    schema: &Schema,
    full_name: &str,
    record: &T,
) -> Result<Value, AvroError> {
    let (index, variant) = union_branch(schema, full_name)?;
    let value = apache_avro::to_value(record).map_err(|e| mismatch(variant, e))?;
    let value = value.resolve(variant).map_err(|e| mismatch(variant, e))?;
    Ok(Value::Union(index as u32, Box::new(value)))
}

/// Appends `record` as the branch named `full_name` of the union `schema`: the
/// branch index, then the record's body (what [`union_variant`] then [`write_body`]
/// write).
pub fn union_encode<T: Serialize>(
    schema: &Schema,
    full_name: &str,
    record: &T,
    out: &mut Vec<u8>,
) -> Result<(), AvroError> {
    let (index, variant) = union_branch(schema, full_name)?;
    // Avro writes a union's branch index as a zig-zag varint long.
    let mut n = ((index as i64) << 1) ^ ((index as i64) >> 63);
    loop {
        let byte = (n & 0x7f) as u8;
        n = ((n as u64) >> 7) as i64;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    encode_serde(variant, record, out)
}

/// `record` as an Avro body of `schema` through apache-avro's schema-aware serde
/// serializer. On an error `out` is left as it was.
fn encode_serde<T: Serialize>(
    schema: &Schema,
    record: &T,
    out: &mut Vec<u8>,
) -> Result<(), AvroError> {
    let start = out.len();
    let written = names_of(schema).and_then(|names| {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .resolved_schemata(names)
            .build()?
            .write_ser(out, record)
    });
    written.map(|_| ()).map_err(|e| {
        out.truncate(start);
        mismatch(schema, e)
    })
}

/// The index and schema of the branch named `full_name` of the union `schema`.
fn union_branch<'s>(schema: &'s Schema, full_name: &str) -> Result<(usize, &'s Schema), AvroError> {
    let Schema::Union(union) = schema else {
        return Err(AvroError::NoSuchVariant(full_name.to_string()));
    };
    union
        .variants()
        .iter()
        .enumerate()
        .find(|(_, v)| schema_name(v).as_deref() == Some(full_name))
        .ok_or_else(|| AvroError::NoSuchVariant(full_name.to_string()))
}

/// The full name of a named schema (`namespace.name`), `None` for anonymous ones.
pub fn schema_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.fullname(None)),
        Schema::Enum(e) => Some(e.name.fullname(None)),
        Schema::Fixed(f) => Some(f.name.fullname(None)),
        _ => None,
    }
}

fn mismatch(schema: &Schema, error: impl std::fmt::Display) -> AvroError {
    AvroError::Mismatch {
        schema: schema_name(schema).unwrap_or_else(|| schema_kind(schema).to_string()),
        message: error.to_string(),
    }
}

fn schema_kind(schema: &Schema) -> &'static str {
    match schema {
        Schema::Union(_) => "union",
        Schema::String => "string",
        Schema::Long => "long",
        Schema::Int => "int",
        _ => "schema",
    }
}

/// Writes `value` (already resolved against `schema`) as an Avro body, no framing.
pub fn write_body(schema: &Schema, value: Value, out: &mut Vec<u8>) -> Result<(), AvroError> {
    let names = names_of(schema).map_err(|e| mismatch(schema, e))?;
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .resolved_schemata(names)
        .build()
        .map_err(|e| mismatch(schema, e))?;
    writer
        .write_value(out, value)
        .map_err(|e| mismatch(schema, e))?;
    Ok(())
}

/// Reads an Avro body written with `writer` and resolves it to `reader` (schema
/// evolution: a field added with a default, a field removed).
pub fn read_body(
    writer: &Schema,
    reader: Option<&Schema>,
    body: &[u8],
) -> Result<Value, AvroError> {
    let mut cursor = body;
    let names = names_of(writer).map_err(|e| AvroError::Body(e.to_string()))?;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .resolved_writer_schemata(names.clone())
        .build()
        .and_then(|datum| datum.read_value(&mut cursor))
        .map_err(|e| AvroError::Body(e.to_string()))?;
    if !cursor.is_empty() {
        return Err(AvroError::Body(format!(
            "{} trailing bytes after the record",
            cursor.len()
        )));
    }
    // apache-avro 0.22 reads a string cut short by the end of the body as a null
    // rather than failing; a value that does not validate against the schema it was
    // read with is such a truncated body.
    if !value.validate_with_names(writer, names.get_names()) {
        return Err(AvroError::Body(
            "the body ends before the record does (truncated)".to_string(),
        ));
    }
    match reader {
        Some(reader) => resolve_to_reader(writer, reader, value),
        None => Ok(value),
    }
}

/// The named types `schema` refers to by name, for apache-avro's readers and writers.
/// None when the schema names no type by reference (every schema in `schemas/`, and
/// every writer schema after [`inline_refs`]): apache-avro would otherwise build this
/// table (a map and a `String` per named type) on every record read or written, which
/// was a sixth of the CPU of the user-cache benchmark.
fn names_of(schema: &Schema) -> Result<ResolvedSchema<'_>, apache_avro::Error> {
    if refers_by_name(schema) {
        ResolvedSchema::try_from(schema)
    } else {
        ResolvedSchema::new_with_schemata(Vec::new())
    }
}

/// Whether `schema` uses a named type by reference (`Schema::Ref`) anywhere.
pub fn refers_by_name(schema: &Schema) -> bool {
    match schema {
        Schema::Ref { .. } => true,
        Schema::Array(array) => refers_by_name(&array.items),
        Schema::Map(map) => refers_by_name(&map.types),
        Schema::Union(union) => union.variants().iter().any(refers_by_name),
        Schema::Record(record) => record.fields.iter().any(|f| refers_by_name(&f.schema)),
        _ => false,
    }
}

/// `schema` with every reference to a named type replaced by the type's definition,
/// so it reads and writes the same bytes with no name table (see [`names_of`]).
/// `None` when a type refers to itself (a recursive schema cannot be inlined) or a
/// reference does not resolve; such a schema is used as it is.
pub fn inline_refs(schema: &Schema) -> Option<Schema> {
    if !refers_by_name(schema) {
        return Some(schema.clone());
    }
    let resolved = ResolvedSchema::try_from(schema).ok()?;
    let mut open = Vec::new();
    inline_in(schema, None, resolved.get_names(), &mut open)
}

fn inline_in(
    schema: &Schema,
    namespace: NamespaceRef<'_>,
    names: &HashMap<Name, &Schema>,
    open: &mut Vec<Name>,
) -> Option<Schema> {
    Some(match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(namespace).into_owned();
            if open.contains(&full) {
                return None;
            }
            let definition = *names.get(&full)?;
            open.push(full.clone());
            let inlined = inline_in(definition, full.namespace(), names, open);
            open.pop();
            inlined?
        }
        Schema::Array(array) => {
            let mut array = array.clone();
            *array.items = inline_in(&array.items, namespace, names, open)?;
            Schema::Array(array)
        }
        Schema::Map(map) => {
            let mut map = map.clone();
            *map.types = inline_in(&map.types, namespace, names, open)?;
            Schema::Map(map)
        }
        Schema::Union(union) => {
            let variants = union
                .variants()
                .iter()
                .map(|v| inline_in(v, namespace, names, open))
                .collect::<Option<Vec<_>>>()?;
            Schema::Union(apache_avro::schema::UnionSchema::new(variants).ok()?)
        }
        Schema::Record(record) => {
            let full = record.name.fully_qualified_name(namespace).into_owned();
            open.push(full.clone());
            let mut record = record.clone();
            let fields = record.fields.iter_mut().try_for_each(|field| {
                field.schema = inline_in(&field.schema, full.namespace(), names, open)?;
                Some(())
            });
            open.pop();
            fields?;
            Schema::Record(record)
        }
        other => other.clone(),
    })
}

/// Resolves a value decoded with `writer` to `reader`. apache-avro's `Value::resolve`
/// drops the writer's union branch and takes the first reader branch the value fits
/// by shape, so `DeleteUser {request_id, email}` would become an `UpdateProfile` (its
/// extra fields default to null) and a `RefundRequested` a `PaymentRequested` (the
/// extra `reason` is ignored). The Avro spec matches named branches by name; a
/// top-level union of named types is resolved that way here.
fn resolve_to_reader(writer: &Schema, reader: &Schema, value: Value) -> Result<Value, AvroError> {
    if let (Schema::Union(w), Schema::Union(r), Value::Union(index, inner)) =
        (writer, reader, &value)
        && let Some(name) = w.variants().get(*index as usize).and_then(schema_name)
    {
        let (reader_index, branch) = r
            .variants()
            .iter()
            .enumerate()
            .find(|(_, v)| schema_name(v).as_deref() == Some(name.as_str()))
            .ok_or_else(|| AvroError::NoSuchVariant(name.clone()))?;
        let inner = (**inner)
            .clone()
            .resolve_schemata(branch, r.variants().iter().collect())
            .map_err(|e| AvroError::Body(e.to_string()))?;
        return Ok(Value::Union(reader_index as u32, Box::new(inner)));
    }
    value
        .resolve(reader)
        .map_err(|e| AvroError::Body(e.to_string()))
}
