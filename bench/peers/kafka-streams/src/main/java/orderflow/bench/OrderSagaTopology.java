package orderflow.bench;

import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * Job B3's Processor API topology: orders.commands and payments.results (co-partitioned,
 * keyed by order id) into one {@link OrderSagaProcessor} with the persistent "orders" store
 * (RocksDB, changelogged), the global "auth-users" store filled from auth.users, and sinks
 * to orders.events and payments.requests. Keys never change, so no repartition topic appears.
 */
final class OrderSagaTopology {
    private OrderSagaTopology() {}

    /** The topology; {@code users} decodes auth.users values at lookup. */
    static Topology build(RegistryAvroSerde commands, RegistryAvroSerde results, RegistryAvroSerde users,
                          RegistryAvroSerde events, RegistryAvroSerde requests) {
        OrderSagaProcessor.OutputSchemas out = OrderSagaProcessor.OutputSchemas.of(events.schema(), requests.schema());
        Topology topology = new Topology();
        topology.addGlobalStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(OrderSagaProcessor.USERS_STORE),
                        Serdes.String(), Serdes.ByteArray()).withLoggingDisabled(),
                "auth-users-source", new StringDeserializer(), new ByteArrayDeserializer(), Topics.AUTH_USERS,
                "auth-users-updater", UsersUpdater::new);
        topology.addSource("orders-commands-source", new StringDeserializer(), commands.deserializer(),
                Topics.ORDERS_COMMANDS);
        topology.addSource("payments-results-source", new StringDeserializer(), results.deserializer(),
                Topics.PAYMENTS_RESULTS);
        topology.addProcessor("order-saga", () -> new OrderSagaProcessor(out, users),
                "orders-commands-source", "payments-results-source");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(OrderSagaProcessor.ORDERS_STORE),
                        Serdes.String(), Serdes.ByteArray()),
                "order-saga");
        topology.addSink(OrderSagaProcessor.EVENTS_SINK, Topics.ORDERS_EVENTS, new StringSerializer(),
                events.serializer(), "order-saga");
        topology.addSink(OrderSagaProcessor.REQUESTS_SINK, Topics.PAYMENTS_REQUESTS, new StringSerializer(),
                requests.serializer(), "order-saga");
        return topology;
    }

    /** Keeps the global auth-users store equal to the auth.users topic: the value bytes as they are, a tombstone deletes. */
    static final class UsersUpdater implements Processor<String, byte[], Void, Void> {
        private KeyValueStore<String, byte[]> store;

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            store = context.getStateStore(OrderSagaProcessor.USERS_STORE);
        }

        @Override
        public void process(Record<String, byte[]> record) {
            if (record.value() == null) {
                store.delete(record.key());
            } else {
                store.put(record.key(), record.value());
            }
        }
    }
}
