package orderflow.bench;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Job B3, orderflow's order-saga (pipelines/src/order_saga.rs) as a Processor API
 * processor: PlaceOrder and CancelOrder from orders.commands and PaymentResult from
 * payments.results, one {@link OrderState} per order id in the persistent "orders" store,
 * users looked up in the global "auth-users" store. What ours sends to the dead-letter
 * topic is logged and skipped here. Left out: the wall-clock payment timeout (the
 * benchmark's results always come), so a parked result for an order that never comes
 * stays parked.
 */
final class OrderSagaProcessor implements Processor<String, GenericRecord, String, GenericRecord> {
    private static final Logger log = LoggerFactory.getLogger(OrderSagaProcessor.class);

    /** The order table: order id → {@link OrderState}, and the parked results. */
    static final String ORDERS_STORE = "orders";
    /** The global table of auth.users: user id → the topic's framed User bytes. */
    static final String USERS_STORE = "auth-users";
    /** The sink node of orders.events. */
    static final String EVENTS_SINK = "orders-events-sink";
    /** The sink node of payments.requests. */
    static final String REQUESTS_SINK = "payments-requests-sink";

    static final String PAYMENT_DECLINED = "PAYMENT_DECLINED";
    static final String BUYER_CANCELLED = "BUYER_CANCELLED";
    static final String LATE_APPROVAL = "LATE_APPROVAL";

    /** The saga's DEFAULT_CURRENCIES. */
    static final Set<String> CURRENCIES = Set.of(
            "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "INR",
            "JPY", "KRW", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "TRY", "USD", "ZAR", "AED");

    /** The Avro schemas the saga writes: OrderEvent and the payments.requests branches. */
    record OutputSchemas(Schema event, Schema item, Map<String, GenericData.EnumSymbol> statuses,
                         Schema paymentRequested, Schema refundRequested) {
        static OutputSchemas of(Schema events, Schema requests) {
            Schema status = events.getField("status").schema();
            Map<String, GenericData.EnumSymbol> statuses = new HashMap<>();
            for (String symbol : status.getEnumSymbols()) {
                statuses.put(symbol, new GenericData.EnumSymbol(status, symbol));
            }
            return new OutputSchemas(events, events.getField("items").schema().getElementType(), Map.copyOf(statuses),
                    branch(requests, "orderflow.PaymentRequested"), branch(requests, "orderflow.RefundRequested"));
        }

        private static Schema branch(Schema union, String name) {
            for (Schema s : union.getTypes()) {
                if (s.getFullName().equals(name)) {
                    return s;
                }
            }
            throw new IllegalArgumentException("payments.requests schema has no " + name);
        }
    }

    private final OutputSchemas out;
    private final RegistryAvroSerde users;
    private ProcessorContext<String, GenericRecord> context;
    private KeyValueStore<String, byte[]> orders;
    private KeyValueStore<String, byte[]> userTable;

    OrderSagaProcessor(OutputSchemas out, RegistryAvroSerde users) {
        this.out = out;
        this.users = users;
    }

    @Override
    public void init(ProcessorContext<String, GenericRecord> context) {
        this.context = context;
        this.orders = context.getStateStore(ORDERS_STORE);
        this.userTable = context.getStateStore(USERS_STORE);
    }

    @Override
    public void process(Record<String, GenericRecord> record) {
        GenericRecord value = record.value();
        if (value == null) {
            log.warn("tombstone for key {} skipped", record.key());
            return;
        }
        String type = value.getSchema().getName();
        switch (type) {
            case "PlaceOrder" -> place(record, value);
            case "CancelOrder" -> cancel(record, value);
            case "PaymentResult" -> result(record, value);
            default -> log.warn("record of type {} for key {} skipped", type, record.key());
        }
    }

    private static String str(GenericRecord r, String field) {
        Object v = r.get(field);
        return v == null ? null : v.toString();
    }

    private static boolean keyMatches(Record<String, GenericRecord> record, String orderId, String what) {
        if (orderId.equals(record.key())) {
            return true;
        }
        log.warn("record key {} is not the {}'s order id {}: skipped", record.key(), what, orderId);
        return false;
    }

    private static boolean usableId(String id, String what) {
        if (id.isEmpty() || id.codePoints().anyMatch(Character::isISOControl)) {
            log.warn("{} {} is empty or has control characters: skipped", what, id);
            return false;
        }
        return true;
    }

    private static String parkedKey(String orderId) {
        return "\u0000parked\u0000" + orderId;
    }

    private OrderState load(String orderId) {
        byte[] bytes = orders.get(orderId);
        return bytes == null ? null : OrderState.decode(bytes);
    }

    /** The user's role when it exists and is ACTIVE, else null. */
    private String activeRole(String userId) {
        byte[] bytes = userTable.get(userId);
        if (bytes == null) {
            return null;
        }
        GenericRecord user = users.decode(Topics.AUTH_USERS, bytes);
        return "ACTIVE".equals(str(user, "status")) ? str(user, "role") : null;
    }

    /** The sum of the lines, or null when it overflows a long. */
    static Long orderTotal(List<OrderState.Item> items) {
        long sum = 0;
        try {
            for (OrderState.Item item : items) {
                sum = Math.addExact(sum, Math.multiplyExact((long) item.quantity(), item.unitPrice()));
            }
        } catch (ArithmeticException e) {
            return null;
        }
        return sum;
    }

    /** The first rule the order breaks (its REJECTED reason), or null when it is valid. */
    private String rejection(String buyerId, String sellerId, List<OrderState.Item> items, String currency) {
        String buyerRole = activeRole(buyerId);
        if (buyerRole == null) {
            return "BUYER_NOT_FOUND";
        }
        if (!buyerRole.equals("BUYER")) {
            return "NOT_A_BUYER";
        }
        String sellerRole = activeRole(sellerId);
        if (sellerRole == null) {
            return "SELLER_NOT_FOUND";
        }
        if (!sellerRole.equals("SELLER")) {
            return "NOT_A_SELLER";
        }
        if (items.isEmpty()) {
            return "NO_ITEMS";
        }
        for (OrderState.Item item : items) {
            if (item.quantity() <= 0) {
                return "BAD_QUANTITY";
            }
            if (item.unitPrice() < 0) {
                return "BAD_PRICE";
            }
        }
        if (!CURRENCIES.contains(currency)) {
            return "UNKNOWN_CURRENCY";
        }
        return orderTotal(items) == null ? "TOTAL_OVERFLOW" : null;
    }

    private void place(Record<String, GenericRecord> record, GenericRecord place) {
        String orderId = str(place, "order_id");
        String requestId = str(place, "request_id");
        if (!keyMatches(record, orderId, "PlaceOrder") || !usableId(requestId, "request id")
                || !usableId(orderId, "order id")) {
            return;
        }
        OrderState existing = load(orderId);
        if (existing != null) {
            if (!existing.requestIds.contains(requestId)) {
                log.warn("order {} exists: a PlaceOrder with a new request id ({}) cannot place it again; skipped",
                        orderId, requestId);
            }
            return;
        }
        List<OrderState.Item> items = new ArrayList<>();
        for (Object line : (List<?>) place.get("items")) {
            GenericRecord item = (GenericRecord) line;
            items.add(new OrderState.Item(str(item, "product_id"), (Integer) item.get("quantity"),
                    (Long) item.get("unit_price")));
        }
        OrderState state = new OrderState();
        state.orderId = orderId;
        state.buyerId = str(place, "buyer_id");
        state.sellerId = str(place, "seller_id");
        state.items = List.copyOf(items);
        state.currency = str(place, "currency");
        state.paymentId = DerivedIds.paymentIdFor(orderId);
        state.version = 0;
        state.requestIds = new TreeSet<>(Set.of(requestId));
        String rejected = rejection(state.buyerId, state.sellerId, items, state.currency);
        List<OrderState.Effect> effects;
        if (rejected == null) {
            state.phase = OrderState.Phase.AWAITING_PAYMENT;
            state.total = orderTotal(items);
            effects = List.of(OrderState.Effect.PUBLISH, OrderState.Effect.REQUEST_PAYMENT);
        } else {
            state.phase = OrderState.Phase.REJECTED;
            state.reason = rejected;
            Long total = orderTotal(items);
            state.total = total == null ? 0 : total;
            effects = List.of(OrderState.Effect.PUBLISH);
        }
        apply(record.timestamp(), null, state, effects, requestId);
        applyParked(record.timestamp(), state);
    }

    private void cancel(Record<String, GenericRecord> record, GenericRecord cancel) {
        String orderId = str(cancel, "order_id");
        String requestId = str(cancel, "request_id");
        if (!keyMatches(record, orderId, "CancelOrder") || !usableId(requestId, "request id")) {
            return;
        }
        OrderState state = load(orderId);
        if (state == null) {
            log.warn("CancelOrder for unknown order {}: skipped", orderId);
            return;
        }
        String by = str(cancel, "requested_by");
        if (!state.buyerId.equals(by)) {
            log.warn("CancelOrder of order {} by {}, who is not its buyer: skipped", orderId, by);
            return;
        }
        if (state.requestIds.contains(requestId)) {
            return;
        }
        OrderState before = state.copy();
        state.requestIds.add(requestId);
        List<OrderState.Effect> effects = state.onCancel(str(cancel, "reason"));
        apply(record.timestamp(), before, state, effects, requestId);
    }

    private void result(Record<String, GenericRecord> record, GenericRecord result) {
        String orderId = str(result, "order_id");
        if (!keyMatches(record, orderId, "PaymentResult")) {
            return;
        }
        String paymentId = str(result, "payment_id");
        String outcome = str(result, "outcome");
        OrderState state = load(orderId);
        if (state == null) {
            park(orderId, paymentId, outcome);
            return;
        }
        if (!paymentId.equals(state.paymentId)) {
            log.warn("PaymentResult for order {} names payment {}, not the order's {}: skipped",
                    orderId, paymentId, state.paymentId);
            return;
        }
        OrderState before = state.copy();
        try {
            List<OrderState.Effect> effects = state.onResult(outcome);
            apply(record.timestamp(), before, state, effects, null);
        } catch (OrderState.Conflict e) {
            log.warn("{}: skipped", e.getMessage());
        }
    }

    /** Keeps a result that came before its order (see order_saga.rs, "A result before its order"). */
    private void park(String orderId, String paymentId, String outcome) {
        if (!paymentId.equals(DerivedIds.paymentIdFor(orderId))) {
            log.warn("PaymentResult for unknown order {} names payment {}, which is not that order's: skipped",
                    orderId, paymentId);
            return;
        }
        String key = parkedKey(orderId);
        byte[] bytes = orders.get(key);
        List<String> parked = bytes == null ? new ArrayList<>() : OrderState.decodeParked(bytes);
        if (parked.contains(outcome)) {
            return;
        }
        parked.add(outcome);
        orders.put(key, OrderState.encodeParked(parked));
        log.debug("payment result {} of order {} parked until its order is placed", outcome, orderId);
    }

    /** Applies the results parked for a just-placed order, in the order they came. */
    private void applyParked(long timestamp, OrderState state) {
        String key = parkedKey(state.orderId);
        byte[] bytes = orders.get(key);
        if (bytes == null) {
            return;
        }
        orders.delete(key);
        for (String outcome : OrderState.decodeParked(bytes)) {
            OrderState before = state.copy();
            try {
                List<OrderState.Effect> effects = state.onResult(outcome);
                apply(timestamp, before, state, effects, null);
            } catch (OrderState.Conflict e) {
                restore(state, before);
                log.warn("a parked payment result of order {} is dropped: {}", state.orderId, e.getMessage());
            }
        }
    }

    private static void restore(OrderState state, OrderState before) {
        state.phase = before.phase;
        state.charge = before.charge;
        state.reason = before.reason;
        state.version = before.version;
        state.requestIds = before.requestIds;
    }

    /** Carries out {@code effects}, then saves the state if it differs from {@code before} (null: new). */
    private void apply(long timestamp, OrderState before, OrderState state, List<OrderState.Effect> effects,
                       String requestId) {
        for (OrderState.Effect effect : effects) {
            switch (effect.kind()) {
                case PUBLISH -> {
                    state.version += 1;
                    context.forward(new Record<>(state.orderId, event(state, timestamp, requestId), timestamp),
                            EVENTS_SINK);
                }
                case REQUEST_PAYMENT -> {
                    GenericRecord request = new GenericData.Record(out.paymentRequested());
                    fillPayment(request, state, timestamp);
                    context.forward(new Record<>(state.orderId, request, timestamp), REQUESTS_SINK);
                }
                case REQUEST_REFUND -> {
                    GenericRecord request = new GenericData.Record(out.refundRequested());
                    fillPayment(request, state, timestamp);
                    request.put("reason", effect.refundReason());
                    context.forward(new Record<>(state.orderId, request, timestamp), REQUESTS_SINK);
                }
                default -> throw new IllegalStateException("unknown effect " + effect);
            }
        }
        if (!state.equals(before)) {
            orders.put(state.orderId, state.encode());
        }
    }

    private static void fillPayment(GenericRecord request, OrderState state, long timestamp) {
        request.put("payment_id", state.paymentId);
        request.put("order_id", state.orderId);
        request.put("buyer_id", state.buyerId);
        request.put("amount", state.total);
        request.put("currency", state.currency);
        request.put("requested_at", timestamp);
    }

    /** The OrderEvent showing the order as it is now. */
    private GenericRecord event(OrderState state, long at, String requestId) {
        GenericRecord event = new GenericData.Record(out.event());
        event.put("order_id", state.orderId);
        event.put("buyer_id", state.buyerId);
        event.put("seller_id", state.sellerId);
        event.put("status", out.statuses().get(state.status()));
        event.put("total", state.total);
        event.put("currency", state.currency);
        event.put("reason", state.reason);
        event.put("version", state.version);
        event.put("at", at);
        List<GenericRecord> items = new ArrayList<>(state.items.size());
        for (OrderState.Item item : state.items) {
            GenericRecord line = new GenericData.Record(out.item());
            line.put("product_id", item.productId());
            line.put("quantity", item.quantity());
            line.put("unit_price", item.unitPrice());
            items.add(line);
        }
        event.put("items", items);
        event.put("request_id", requestId);
        return event;
    }
}
