//! The Confluent wire format against a real registry client: values our serde writes
//! are read by schema_registry_converter and the other way round, through the embedded
//! registry served over loopback; a producer on a newer compatible schema is read
//! after one lookup; every kind of bad bytes is a typed error naming topic, partition
//! and offset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use anyhow::Result;
use common::{Click, catalog, counter_yaml, fixtures};
use orderflow_runtime::registry::{RegistryClient, SchemaStore, http};
use orderflow_runtime::topology::load_str;
use orderflow_runtime::wire::{DecodeErrorKind, TopicSerde};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Registry {
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Registry {
    async fn start() -> Result<Registry> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(http::serve(listener, Arc::new(SchemaStore::new()), async {
            let _ = stopped.await;
        }));
        Ok(Registry {
            url,
            stop: Some(stop),
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serde_on(registry: &RegistryClient) -> Result<TopicSerde> {
    let topology = load_str(
        &counter_yaml(),
        "counter.yaml",
        &fixtures(),
        &|_| None,
        &catalog(),
    )?;
    Ok(TopicSerde::register(&topology, registry).await?)
}

fn click() -> Click {
    Click {
        user: "ann".into(),
        page: "/home".into(),
    }
}

#[tokio::test]
async fn our_bytes_are_confluent_bytes_both_ways() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    let serde = serde_on(&client).await?;
    let id = serde.topic("clicks").unwrap().id;

    // Ours → the converter.
    let bytes = serde.encode("clicks", &click())?;
    assert_eq!(bytes[0], 0);
    assert_eq!(u32::from_be_bytes(bytes[1..5].try_into()?), id);
    let decoded = AvroDecoder::new(SrSettings::new(registry.url.clone()))
        .decode(Some(&bytes))
        .await?;
    assert_eq!(apache_avro::from_value::<Click>(&decoded.value)?, click());

    // The converter → ours.
    let encoder = AvroEncoder::new(SrSettings::new(registry.url.clone()));
    let theirs = encoder
        .encode_struct(
            click(),
            &SubjectNameStrategy::TopicNameStrategy("clicks".into(), false),
        )
        .await?;
    assert_eq!(theirs, bytes, "same schema, same id, same body");
    let value = serde.decode_with(&client, "clicks", 0, 7, &theirs).await?;
    assert_eq!(
        <Click as orderflow_runtime::avro::AvroRecord>::from_avro(&value)?,
        click()
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct ClickV2 {
    user: String,
    page: String,
    referrer: Option<String>,
}

#[tokio::test]
async fn a_newer_compatible_writer_is_read_after_one_lookup() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    let serde = serde_on(&client).await?;
    let v2 = r#"{"type":"record","name":"Click","namespace":"orderflow.test","fields":[
        {"name":"user","type":"string"},{"name":"page","type":"string"},
        {"name":"referrer","type":["null","string"],"default":null}]}"#;
    let encoder = AvroEncoder::new(SrSettings::new(registry.url.clone()));
    let bytes = encoder
        .encode_struct(
            ClickV2 {
                user: "bob".into(),
                page: "/cart".into(),
                referrer: Some("ad".into()),
            },
            &SubjectNameStrategy::TopicNameStrategyWithSchema(
                "clicks".into(),
                false,
                SuppliedSchema::new(None, SchemaType::Avro, v2.to_string()),
            ),
        )
        .await?;
    let writer_id = u32::from_be_bytes(bytes[1..5].try_into()?);
    assert_ne!(writer_id, serde.topic("clicks").unwrap().id);
    assert!(!serde.knows_writer(writer_id));
    let value = serde.decode_with(&client, "clicks", 1, 3, &bytes).await?;
    let read = <Click as orderflow_runtime::avro::AvroRecord>::from_avro(&value)?;
    assert_eq!((read.user.as_str(), read.page.as_str()), ("bob", "/cart"));
    assert!(
        serde.knows_writer(writer_id),
        "cached after the first lookup"
    );
    // Cached: the registry can go away and the same writer still decodes.
    drop(registry);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    serde.decode_with(&client, "clicks", 1, 4, &bytes).await?;
    Ok(())
}

#[tokio::test]
async fn bad_bytes_are_typed_errors_naming_topic_partition_and_offset() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    let serde = serde_on(&client).await?;
    let good = serde.encode("clicks", &click())?;

    let mut bad_magic = good.clone();
    bad_magic[0] = 1;
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&4242u32.to_be_bytes());
    let garbage = [
        &good[..5],
        &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ][..],
    ]
    .concat();
    let trailing = [&good[..], &[1, 2, 3][..]].concat();
    let cases: Vec<(Vec<u8>, DecodeErrorKind)> = vec![
        (vec![], DecodeErrorKind::Empty),
        (bad_magic, DecodeErrorKind::BadMagic(1)),
        (good[..4].to_vec(), DecodeErrorKind::Truncated { len: 4 }),
        (unknown, DecodeErrorKind::UnknownSchema(4242)),
    ];
    for (offset, (bytes, expected)) in cases.into_iter().enumerate() {
        let error = serde
            .decode_with(&client, "clicks", 1, offset as i64, &bytes)
            .await
            .unwrap_err();
        assert_eq!(error.kind, expected);
        assert_eq!(
            (error.topic.as_str(), error.partition, error.offset),
            ("clicks", 1, offset as i64)
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot decode clicks[1]@{offset}: ")),
            "{error}"
        );
        assert!(!error.kind.is_retriable());
    }
    for bytes in [garbage, trailing, good[..good.len() - 2].to_vec()] {
        let error = serde
            .decode_with(&client, "clicks", 0, 9, &bytes)
            .await
            .unwrap_err();
        assert!(matches!(error.kind, DecodeErrorKind::Body(_)), "{error}");
    }
    // A record of a topic the serde does not know.
    let error = serde.decode("nope", 0, 0, &good).unwrap_err();
    assert_eq!(error.kind, DecodeErrorKind::UnknownTopic);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_registry_is_retriable_not_the_records_fault() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    let serde = serde_on(&client).await?;
    let mut unknown = serde.encode("clicks", &click())?;
    unknown[1..5].copy_from_slice(&77u32.to_be_bytes());
    drop(registry);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let error = serde
        .decode_with(&client, "clicks", 0, 0, &unknown)
        .await
        .unwrap_err();
    assert!(error.kind.is_retriable(), "{error}");
    Ok(())
}

#[tokio::test]
async fn an_incompatible_topic_schema_is_refused_at_start() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    serde_on(&client).await?;
    // The same topic with a required field added: BACKWARD-incompatible.
    let changed = counter_yaml().replace("value: click.avsc", "value: click-v2-required.avsc");
    let dir = tempdir();
    std::fs::copy(fixtures().join("count.avsc"), dir.join("count.avsc"))?;
    std::fs::write(
        dir.join("click-v2-required.avsc"),
        r#"{"type":"record","name":"Click","namespace":"orderflow.test","fields":[
            {"name":"user","type":"string"},{"name":"page","type":"string"},{"name":"session","type":"string"}]}"#,
    )?;
    let topology = load_str(&changed, "counter.yaml", &dir, &|_| None, &catalog())?;
    let error = TopicSerde::register(&topology, &RegistryClient::remote(&registry.url)?)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("clicks-value") && message.contains("incompatible"),
        "{message}"
    );
    assert!(message.contains("click-v2-required.avsc"), "{message}");
    Ok(())
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orderflow-wire-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn local_serde() -> TopicSerde {
        let topology = load_str(
            &counter_yaml(),
            "counter.yaml",
            &fixtures(),
            &|_| None,
            &catalog(),
        )
        .unwrap();
        let mut topics = std::collections::BTreeMap::new();
        for (i, (name, topic)) in topology.topics.iter().enumerate() {
            if let Some(schema) = &topic.schema {
                topics.insert(
                    name.clone(),
                    orderflow_runtime::wire::TopicSchemaId {
                        id: i as u32 + 1,
                        schema: schema.schema.clone(),
                    },
                );
            }
        }
        TopicSerde::new(topics)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all: an error or a value, never a panic.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let serde = local_serde();
            let _ = serde.decode("clicks", 0, 0, &bytes);
        }

        /// A valid record with bytes flipped, cut or appended after the header.
        #[test]
        fn mutated_records(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..4), cut in 0usize..40) {
            let serde = local_serde();
            let mut bytes = serde.encode("clicks", &click()).unwrap();
            for (at, b) in flips {
                let at = 5 + at % (bytes.len() - 5);
                bytes[at] = b;
            }
            bytes.truncate(bytes.len().saturating_sub(cut).max(5));
            let _ = serde.decode("clicks", 0, 0, &bytes);
        }
    }
}

#[derive(Serialize)]
struct Place {
    url: String,
}

#[derive(Serialize)]
struct ClickV3 {
    user: String,
    page: String,
    from: Option<Place>,
    to: Option<Place>,
}

/// A producer whose schema uses a named type a second time by reference (as Avro's
/// Java code generator writes shared types) is read like any other writer: the
/// decoder keeps such a schema with its references inlined.
#[tokio::test]
async fn a_writer_that_refers_to_its_types_by_name_is_read() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::remote(&registry.url)?;
    let serde = serde_on(&client).await?;
    let v3 = r#"{"type":"record","name":"Click","namespace":"orderflow.test","fields":[
        {"name":"user","type":"string"},{"name":"page","type":"string"},
        {"name":"from","type":["null",{"type":"record","name":"Place",
            "fields":[{"name":"url","type":"string"}]}],"default":null},
        {"name":"to","type":["null","Place"],"default":null}]}"#;
    let encoder = AvroEncoder::new(SrSettings::new(registry.url.clone()));
    let bytes = encoder
        .encode_struct(
            ClickV3 {
                user: "cy".into(),
                page: "/pay".into(),
                from: Some(Place { url: "/a".into() }),
                to: Some(Place { url: "/b".into() }),
            },
            &SubjectNameStrategy::TopicNameStrategyWithSchema(
                "clicks".into(),
                false,
                SuppliedSchema::new(None, SchemaType::Avro, v3.to_string()),
            ),
        )
        .await?;
    let value = serde.decode_with(&client, "clicks", 0, 9, &bytes).await?;
    let read = <Click as orderflow_runtime::avro::AvroRecord>::from_avro(&value)?;
    assert_eq!((read.user.as_str(), read.page.as_str()), ("cy", "/pay"));
    Ok(())
}

/// `inline_refs` spells each referenced type out: the result names nothing by
/// reference and reads every body exactly as the original does. A type that refers
/// to itself cannot be spelled out and is left alone (and still reads).
#[test]
fn inlined_schemas_read_the_same_values() -> Result<()> {
    use apache_avro::Schema;
    use apache_avro::types::Value;
    use orderflow_runtime::avro::{inline_refs, read_body, refers_by_name, write_body};

    let shared = Schema::parse_str(
        r#"{"type":"record","name":"Move","namespace":"orderflow.test","fields":[
            {"name":"from","type":{"type":"record","name":"Cell","fields":[
                {"name":"row","type":"int"},
                {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}}]}},
            {"name":"to","type":"Cell"},
            {"name":"via","type":{"type":"array","items":"orderflow.test.Cell"}},
            {"name":"tags","type":{"type":"map","values":["null","Kind"]}}]}"#,
    )?;
    assert!(refers_by_name(&shared));
    let inlined = inline_refs(&shared).expect("not recursive");
    assert!(!refers_by_name(&inlined));
    let cell = |row: i32, kind: u32| {
        Value::Record(vec![
            ("row".into(), Value::Int(row)),
            (
                "kind".into(),
                Value::Enum(kind, ["A", "B"][kind as usize].into()),
            ),
        ])
    };
    let value = Value::Record(vec![
        ("from".into(), cell(1, 0)),
        ("to".into(), cell(2, 1)),
        ("via".into(), Value::Array(vec![cell(3, 1), cell(4, 0)])),
        (
            "tags".into(),
            Value::Map(
                [
                    (
                        "x".to_string(),
                        Value::Union(1, Box::new(Value::Enum(1, "B".into()))),
                    ),
                    ("y".to_string(), Value::Union(0, Box::new(Value::Null))),
                ]
                .into(),
            ),
        ),
    ]);
    let mut body = Vec::new();
    write_body(&shared, value.clone(), &mut body)?;
    let mut again = Vec::new();
    write_body(&inlined, value.clone(), &mut again)?;
    assert_eq!(body, again, "both spellings write the same bytes");
    assert_eq!(read_body(&shared, None, &body)?, value);
    assert_eq!(read_body(&inlined, None, &body)?, value);
    // Cut short, the inlined schema still refuses the body.
    assert!(read_body(&inlined, None, &body[..body.len() - 2]).is_err());

    let list = Schema::parse_str(
        r#"{"type":"record","name":"Node","fields":[
            {"name":"value","type":"long"},{"name":"next","type":["null","Node"]}]}"#,
    )?;
    assert!(
        inline_refs(&list).is_none(),
        "a recursive type stays as it is"
    );
    let chain = Value::Record(vec![
        ("value".into(), Value::Long(1)),
        (
            "next".into(),
            Value::Union(
                1,
                Box::new(Value::Record(vec![
                    ("value".into(), Value::Long(2)),
                    ("next".into(), Value::Union(0, Box::new(Value::Null))),
                ])),
            ),
        ),
    ]);
    let mut body = Vec::new();
    write_body(&list, chain.clone(), &mut body)?;
    assert_eq!(read_body(&list, None, &body)?, chain);
    Ok(())
}
