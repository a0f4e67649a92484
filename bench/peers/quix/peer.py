"""The Quix Streams peer of orderflow's benchmark jobs B1 (buyer-relations) and B3
(order-saga): one process, one job, run until SIGTERM (exit 0) or a fatal error
(exit 1 with the reason on stderr). See README.md beside this file.

    python peer.py --bootstrap HOST:PORT --registry http://HOST:PORT --job b1|b3 \
        --guarantee at_least_once|exactly_once --group ID --state-dir DIR --schemas DIR

Wire format: Confluent framing (0x00, schema id, Avro body) through Quix's own
AvroSerializer/AvroDeserializer with schema-registry support (confluent-kafka's
SchemaRegistryClient underneath): input writer schemas are fetched once per id; each
output topic's schema file is registered under `<topic>-value` at start and every
output is framed with that id. Keys are UTF-8 strings.
"""

import argparse
import json
import logging
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Optional

# A SIGTERM or SIGINT during the imports below (about a second) only sets this flag;
# `main` looks at it once it has put its own handlers in place.
_signalled = threading.Event()
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: _signalled.set())
    signal.signal(signal.SIGINT, lambda *_: _signalled.set())

# authlib (pulled in by confluent-kafka's registry client) warns at import about its
# own httpx integration, which the registry client does not use. Its module
# `deprecate` installs an "always" filter for its warnings, so ours goes in after it.
try:
    import authlib.deprecate  # noqa: F401
except ImportError:
    pass
warnings.filterwarnings("ignore", message="The httpx module is deprecated")

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from quixstreams import Application
from quixstreams.models.serializers import MessageField, SerializationContext
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer
from quixstreams.models.serializers.schema_registry import (
    SchemaRegistryClientConfig,
    SchemaRegistrySerializationConfig,
)

from saga import COMMAND, ORDERS_EVENTS, PAYMENTS_REQUESTS, RESULT, OrderSaga

logger = logging.getLogger("peer")

ORDERS_COMMANDS = "orders.commands"
PAYMENTS_RESULTS = "payments.results"
AUTH_USERS = "auth.users"
AUTH_RELATIONS = "auth.relations"

GUARANTEES = {"at_least_once": "at-least-once", "exactly_once": "exactly-once"}

# How long the auth.users preload may take before the peer gives up.
USERS_LOAD_TIMEOUT_S = 300.0


class Fatal(Exception):
    """A reason to stop with a non-zero exit code."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived before the Quix application ran."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap HOST:PORT")
    p.add_argument("--registry", required=True, help="schema registry URL")
    p.add_argument("--job", required=True, choices=["b1", "b3"])
    p.add_argument("--guarantee", required=True, choices=sorted(GUARANTEES))
    p.add_argument("--group", required=True, help="consumer group (and transactional id base)")
    p.add_argument("--state-dir", required=True, help="Quix state directory (RocksDB)")
    p.add_argument("--schemas", required=True, help="the repo's schemas/ directory")
    return p.parse_args(argv)


class Serde:
    """Quix Avro serde over the registry: one deserializer per input shape, one
    serializer per output topic, its schema registered at start."""

    def __init__(self, registry_url: str, schemas_dir: Path):
        self._client_config = SchemaRegistryClientConfig(url=registry_url)
        self._registry = SchemaRegistryClient({"url": registry_url})
        self._schemas_dir = schemas_dir

    def deserializer(self, union_of_records: bool = False) -> AvroDeserializer:
        """Decodes with each record's writer schema; for a union of records the value
        is `(record name, record)`."""
        return AvroDeserializer(
            schema_registry_client_config=self._client_config,
            return_record_name=union_of_records,
        )

    def serializer(self, topic: str) -> AvroSerializer:
        """Registers `schemas/<topic>.avsc` under `<topic>-value` now, and returns the
        serializer that frames with that id (it looks the id up, never registers)."""
        path = self._schemas_dir / f"{topic}.avsc"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise Fatal(f"cannot read the schema of {topic}: {e}") from e
        try:
            schema_id = self._registry.register_schema(f"{topic}-value", Schema(text, "AVRO"))
        except Exception as e:
            raise Fatal(f"cannot register the schema of {topic}: {e}") from e
        logger.info("schema of %s registered as id %s", topic, schema_id)
        return AvroSerializer(
            schema=json.loads(text),
            schema_registry_client_config=self._client_config,
            schema_registry_serialization_config=SchemaRegistrySerializationConfig(
                auto_register_schemas=False
            ),
        )


class UsersTable:
    """auth.users as a global table: every partition read from the beginning to the
    end it has at start (before the job consumes anything), then followed in a
    background thread. A plain assigned consumer: no group, no commits."""

    def __init__(self, bootstrap: str, group: str, deserializer: AvroDeserializer):
        self.users: dict[str, dict[str, Any]] = {}
        self._deserialize = deserializer
        self._ctx = SerializationContext(topic=AUTH_USERS, field=MessageField.VALUE)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{group}.users-table",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
            }
        )
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def _apply(self, msg) -> None:
        if msg.error():
            raise KafkaException(msg.error())
        key = msg.key().decode("utf-8")
        if msg.value() is None:
            self.users.pop(key, None)
        else:
            self.users[key] = self._deserialize(msg.value(), self._ctx)

    def load(self, stop: threading.Event) -> None:
        """Reads every partition to its end offset at start."""
        meta = self._consumer.list_topics(AUTH_USERS, timeout=30)
        topic = meta.topics.get(AUTH_USERS)
        if topic is None or topic.error is not None or not topic.partitions:
            raise Fatal(f"topic {AUTH_USERS} not found")
        tps = [TopicPartition(AUTH_USERS, p, OFFSET_BEGINNING) for p in topic.partitions]
        ends = {}
        for tp in tps:
            _low, high = self._consumer.get_watermark_offsets(tp, timeout=30)
            ends[tp.partition] = high
        self._consumer.assign(tps)
        deadline = time.monotonic() + USERS_LOAD_TIMEOUT_S
        pending = {p for p, end in ends.items() if end > 0}
        while pending:
            if stop.is_set():
                raise Stopped()
            if time.monotonic() > deadline:
                raise Fatal(f"{AUTH_USERS} not read to its end in {USERS_LOAD_TIMEOUT_S}s")
            for msg in self._consumer.consume(num_messages=1000, timeout=0.5):
                self._apply(msg)
            positions = self._consumer.position(
                [TopicPartition(AUTH_USERS, p) for p in pending]
            )
            pending = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
        logger.info("%s loaded: %d users", AUTH_USERS, len(self.users))

    def follow(self) -> None:
        """Keeps applying later changes in a daemon thread until `close`."""

        def run() -> None:
            try:
                while not self._done.is_set():
                    for msg in self._consumer.consume(num_messages=1000, timeout=1.0):
                        self._apply(msg)
            except BaseException as e:  # reported by `close`
                self._error = e

        self._thread = threading.Thread(target=run, name="users-table", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._consumer.close()
        if self._error is not None:
            raise Fatal(f"following {AUTH_USERS} failed: {self._error}")


def build_b1(app: Application, serde: Serde) -> None:
    """orders.events → PAID only → BuyerSeller keyed `<buyer>:<seller>` → auth.relations."""
    events = app.topic(
        ORDERS_EVENTS, key_deserializer="str", value_deserializer=serde.deserializer()
    )
    relations = app.topic(
        AUTH_RELATIONS, key_serializer="str", value_serializer=serde.serializer(AUTH_RELATIONS)
    )
    sdf = app.dataframe(events)
    sdf = sdf[sdf["status"] == "PAID"]
    sdf = sdf.filter(_relation_ids_ok)
    sdf = sdf.apply(
        lambda e: {
            "buyer_id": e["buyer_id"],
            "seller_id": e["seller_id"],
            "first_paid_order_id": e["order_id"],
            "since": e["at"],
        }
    )
    sdf.to_topic(relations, key=lambda r: f"{r['buyer_id']}:{r['seller_id']}")


def _relation_ids_ok(event: dict) -> bool:
    """orderflow sends a PAID event whose buyer or seller id is empty or has a ':' to
    its dead-letter topic; the peer skips it."""
    for field in ("buyer_id", "seller_id"):
        if not event[field] or ":" in event[field]:
            logger.warning(
                "PAID event of order %r skipped: %s %r cannot be in a relation key",
                event["order_id"],
                field,
                event[field],
            )
            return False
    return True


def build_b3(app: Application, serde: Serde, users: dict[str, dict[str, Any]]) -> None:
    """orders.commands + payments.results (co-partitioned, by order id) concatenated
    into one stateful dataframe: one Quix State (RocksDB) per order id."""
    commands = app.topic(
        ORDERS_COMMANDS,
        key_deserializer="str",
        value_deserializer=serde.deserializer(union_of_records=True),
    )
    results = app.topic(
        PAYMENTS_RESULTS, key_deserializer="str", value_deserializer=serde.deserializer()
    )
    events = app.topic(
        ORDERS_EVENTS, key_serializer="str", value_serializer=serde.serializer(ORDERS_EVENTS)
    )
    requests = app.topic(
        PAYMENTS_REQUESTS,
        key_serializer="str",
        value_serializer=serde.serializer(PAYMENTS_REQUESTS),
    )
    saga = OrderSaga(users)
    inputs = (
        app.dataframe(commands)
        .apply(lambda c: (COMMAND, c))
        .concat(app.dataframe(results).apply(lambda r: (RESULT, r)))
    )
    outputs = inputs.apply(saga.process, stateful=True, metadata=True, expand=True)
    # Two branches of the saga's outputs, one per output topic; the key stays the
    # order id.
    to_events = outputs.filter(lambda o: o[0] == ORDERS_EVENTS).apply(lambda o: o[1])
    to_events.to_topic(events)
    to_requests = outputs.filter(lambda o: o[0] == PAYMENTS_REQUESTS).apply(lambda o: o[1])
    to_requests.to_topic(requests)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The registry client logs every HTTP request at INFO; one per schema id is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    # Until Quix installs its own handlers in `run`, a signal stops the start-up.
    stop = threading.Event()

    def early_stop(*_):
        stop.set()
        raise Stopped()

    users_table: Optional[UsersTable] = None
    status = 0
    try:
        signal.signal(signal.SIGTERM, early_stop)
        signal.signal(signal.SIGINT, early_stop)
        if _signalled.is_set():
            raise Stopped()
        serde = Serde(args.registry, Path(args.schemas))
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            processing_guarantee=GUARANTEES[args.guarantee],
            state_dir=args.state_dir,
        )
        if args.job == "b1":
            build_b1(app, serde)
            inputs = [ORDERS_EVENTS]
        else:
            users_table = UsersTable(args.bootstrap, args.group, serde.deserializer())
            users_table.load(stop)
            users_table.follow()
            build_b3(app, serde, users_table.users)
            inputs = [ORDERS_COMMANDS, PAYMENTS_RESULTS]
        logger.info(
            "quix peer %s (%s, group %s) consuming %s",
            args.job,
            args.guarantee,
            args.group,
            ", ".join(inputs),
        )
        app.run()
    except Stopped:
        logger.info("stopped before the job ran")
    except Fatal as e:
        print(f"quix peer: fatal: {e}", file=sys.stderr)
        status = 1
    except Exception as e:
        logger.exception("the job failed")
        print(f"quix peer: fatal: {type(e).__name__}: {e}", file=sys.stderr)
        status = 1
    if users_table is not None:
        try:
            users_table.close()
        except Fatal as e:
            print(f"quix peer: fatal: {e}", file=sys.stderr)
            status = 1
    return status

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
