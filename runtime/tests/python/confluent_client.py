"""Confluent's own Python client (confluent-kafka's SchemaRegistryClient and
AvroSerializer) against orderflow's schema registry: a third-party check that the
registry speaks the REST API the way real clients expect.

Driven by cli/tests/registry.rs, which runs `orderflow registry`, decodes what this
script produced with orderflow's own wire codec, and restarts the registry between
the two phases:

    produce REGISTRY_URL BROKERS TOPIC  registers the Order schema through
        AvroSerializer (auto-registration, as applications do), produces one record
        to TOPIC, and offers an incompatible schema, which must be refused.
    check REGISTRY_URL TOPIC ID         after a restart: the schema with ID is still
        there under TOPIC-value, and the incompatible schema is still refused.

Each phase prints one JSON object on stdout; any failure exits non-zero.
"""

import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "orderflow.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}

# A new required field: readers on it cannot read what ORDER wrote (not BACKWARD).
INCOMPATIBLE = {
    **ORDER,
    "fields": ORDER["fields"] + [{"name": "currency", "type": "string"}],
}


def refusal(registry, subject):
    """What the registry says to INCOMPATIBLE, three ways a client asks."""
    schema = Schema(json.dumps(INCOMPATIBLE), "AVRO")
    seen = {"compatible": registry.test_compatibility(subject, schema)}
    try:
        registry.register_schema(subject, schema)
        seen["register"] = "accepted"
    except SchemaRegistryError as error:
        seen["register"] = {
            "http_status": error.http_status_code,
            "error_code": error.error_code,
        }
    serializer = AvroSerializer(registry, json.dumps(INCOMPATIBLE))
    try:
        serializer(
            {"id": "o-2", "amount": 1, "note": None, "currency": "EUR"},
            SerializationContext(subject[: -len("-value")], MessageField.VALUE),
        )
        seen["serializer"] = "accepted"
    except SchemaRegistryError as error:
        seen["serializer"] = {
            "http_status": error.http_status_code,
            "error_code": error.error_code,
        }
    return seen


def produce(url, brokers, topic):
    registry = SchemaRegistryClient({"url": url})
    serializer = AvroSerializer(registry, json.dumps(ORDER))
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
        }
    )
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(str(error))

    value = serializer(
        {"id": "o-1", "amount": 1250, "note": "first"},
        SerializationContext(topic, MessageField.VALUE),
    )
    producer.produce(topic, key="o-1", value=value, on_delivery=delivered)
    if producer.flush(30) != 0 or failures:
        raise SystemExit(f"the record was not delivered: {failures}")
    subject = f"{topic}-value"
    latest = registry.get_latest_version(subject)
    return {
        "subject": subject,
        "id": latest.schema_id,
        "version": latest.version,
        "framed_id": int.from_bytes(value[1:5], "big"),
        "magic": value[0],
        "refused": refusal(registry, subject),
    }


def check(url, topic, schema_id):
    # A new client: nothing cached from the first phase.
    registry = SchemaRegistryClient({"url": url})
    subject = f"{topic}-value"
    by_id = registry.get_schema(schema_id)
    found = registry.lookup_schema(subject, Schema(json.dumps(ORDER), "AVRO"))
    return {
        "subjects": registry.get_subjects(),
        "versions": registry.get_versions(subject),
        "schema": json.loads(by_id.schema_str),
        "lookup": {"id": found.schema_id, "version": found.version},
        "refused": refusal(registry, subject),
    }


def main(argv):
    if len(argv) == 5 and argv[1] == "produce":
        result = produce(argv[2], argv[3], argv[4])
    elif len(argv) == 5 and argv[1] == "check":
        result = check(argv[2], argv[3], int(argv[4]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv)
