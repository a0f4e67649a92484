package orderflow.bench;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Job B1, orderflow's buyer-relations processor in the DSL: every PAID OrderEvent on
 * orders.events becomes a BuyerSeller on auth.relations keyed {@code <buyer_id>:<seller_id>}.
 * Stateless: the key change comes last, so no repartition topic appears.
 */
final class BuyerRelationsTopology {
    private static final Logger log = LoggerFactory.getLogger(BuyerRelationsTopology.class);

    private BuyerRelationsTopology() {}

    /** The topology reading {@code events} and writing {@code relations}. */
    static Topology build(RegistryAvroSerde events, RegistryAvroSerde relations) {
        Schema relationSchema = relations.schema();
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(Topics.ORDERS_EVENTS, Consumed.with(Serdes.String(), events.serde()))
                .filter((orderId, event) -> event != null && "PAID".equals(event.get("status").toString()))
                .filter(BuyerRelationsTopology::usableIds)
                .map((orderId, event) -> {
                    String buyer = event.get("buyer_id").toString();
                    String seller = event.get("seller_id").toString();
                    GenericRecord relation = new GenericData.Record(relationSchema);
                    relation.put("buyer_id", buyer);
                    relation.put("seller_id", seller);
                    relation.put("first_paid_order_id", event.get("order_id").toString());
                    relation.put("since", event.get("at"));
                    return KeyValue.pair(buyer + ":" + seller, relation);
                })
                .to(Topics.AUTH_RELATIONS, Produced.with(Serdes.String(), relations.serde()));
        return builder.build();
    }

    /** Whether both ids can stand on a side of the relation key (ours dead-letters the others). */
    private static boolean usableIds(String orderId, GenericRecord event) {
        for (String field : new String[] {"buyer_id", "seller_id"}) {
            String id = event.get(field).toString();
            if (id.isEmpty() || id.contains(":")) {
                log.warn("PAID event of order {}: {} {} cannot be part of a relation key; skipped", orderId, field, id);
                return false;
            }
        }
        return true;
    }
}
