package orderflow.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.TreeSet;
import org.apache.avro.Schema;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * One order's state in the saga's "orders" store and its transitions, ported from
 * order_saga.rs ({@code OrderState}, {@code on_result}, {@code on_cancel}). Stored as
 * Avro binary of {@link #SCHEMA} (no framing: it never leaves the store and its changelog).
 */
final class OrderState {
    /** Where an order is in the saga (order_saga.rs {@code Phase}). */
    enum Phase { REJECTED, AWAITING_PAYMENT, PAID, REFUND_PENDING, REFUNDED, CANCELLED }

    /** What became of the charge of a CANCELLED order (order_saga.rs {@code Charge}). */
    enum Charge { UNANSWERED, DECLINED, REFUND_REQUESTED, REFUNDED }

    /** One order line. */
    record Item(String productId, int quantity, long unitPrice) {}

    /** What a transition asks for, in order: publish the new status, or ask for the charge or a refund. */
    record Effect(Kind kind, String refundReason) {
        enum Kind { PUBLISH, REQUEST_PAYMENT, REQUEST_REFUND }

        static final Effect PUBLISH = new Effect(Kind.PUBLISH, null);
        static final Effect REQUEST_PAYMENT = new Effect(Kind.REQUEST_PAYMENT, null);

        static Effect refund(String reason) {
            return new Effect(Kind.REQUEST_REFUND, reason);
        }
    }

    /** A payment result that contradicts what the order knows (the saga dead-letters it). */
    static final class Conflict extends Exception {
        private static final long serialVersionUID = 1L;

        Conflict(String message) {
            super(message);
        }
    }

    /** The layout of the stored bytes. */
    static final Schema SCHEMA = new Schema.Parser().parse("""
            {"type": "record", "name": "OrderState", "namespace": "orderflow.bench", "fields": [
              {"name": "order_id", "type": "string"},
              {"name": "buyer_id", "type": "string"},
              {"name": "seller_id", "type": "string"},
              {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
                {"name": "product_id", "type": "string"},
                {"name": "quantity", "type": "int"},
                {"name": "unit_price", "type": "long"}]}}},
              {"name": "currency", "type": "string"},
              {"name": "total", "type": "long"},
              {"name": "payment_id", "type": "string"},
              {"name": "phase", "type": {"type": "enum", "name": "Phase", "symbols":
                ["REJECTED", "AWAITING_PAYMENT", "PAID", "REFUND_PENDING", "REFUNDED", "CANCELLED"]}},
              {"name": "charge", "type": ["null", {"type": "enum", "name": "Charge", "symbols":
                ["UNANSWERED", "DECLINED", "REFUND_REQUESTED", "REFUNDED"]}]},
              {"name": "reason", "type": ["null", "string"]},
              {"name": "version", "type": "long"},
              {"name": "request_ids", "type": {"type": "array", "items": "string"}}
            ]}""");

    /** The layout of the results parked for an order not placed yet: their outcomes, in arrival order. */
    static final Schema PARKED_SCHEMA = Schema.createArray(Schema.create(Schema.Type.STRING));

    String orderId;
    String buyerId;
    String sellerId;
    List<Item> items;
    String currency;
    long total;
    String paymentId;
    Phase phase;
    /** Set only in {@link Phase#CANCELLED}. */
    Charge charge;
    String reason;
    long version;
    TreeSet<String> requestIds;

    /** A copy to compare against after a transition. */
    OrderState copy() {
        OrderState c = new OrderState();
        c.orderId = orderId;
        c.buyerId = buyerId;
        c.sellerId = sellerId;
        c.items = items;
        c.currency = currency;
        c.total = total;
        c.paymentId = paymentId;
        c.phase = phase;
        c.charge = charge;
        c.reason = reason;
        c.version = version;
        c.requestIds = new TreeSet<>(requestIds);
        return c;
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof OrderState s)) {
            return false;
        }
        return orderId.equals(s.orderId) && buyerId.equals(s.buyerId) && sellerId.equals(s.sellerId)
                && items.equals(s.items) && currency.equals(s.currency) && total == s.total
                && paymentId.equals(s.paymentId) && phase == s.phase && charge == s.charge
                && Objects.equals(reason, s.reason) && version == s.version && requestIds.equals(s.requestIds);
    }

    @Override
    public int hashCode() {
        return Objects.hash(orderId, phase, charge, version);
    }

    /** The OrderStatus its events show. */
    String status() {
        return switch (phase) {
            case REJECTED -> "REJECTED";
            case AWAITING_PAYMENT -> "ORDERED";
            case PAID, REFUND_PENDING -> "PAID";
            case REFUNDED -> "REFUNDED";
            case CANCELLED -> "CANCELLED";
        };
    }

    private void enter(Phase next, Charge nextCharge, String nextReason) {
        phase = next;
        charge = nextCharge;
        reason = nextReason;
    }

    /** A CancelOrder by the buyer (its request id already recorded). */
    List<Effect> onCancel(String commandReason) {
        switch (phase) {
            case AWAITING_PAYMENT:
                enter(Phase.CANCELLED, Charge.UNANSWERED, OrderSagaProcessor.BUYER_CANCELLED);
                return List.of(Effect.PUBLISH);
            case PAID:
                phase = Phase.REFUND_PENDING;
                String why = commandReason != null && !commandReason.isBlank()
                        ? commandReason : OrderSagaProcessor.BUYER_CANCELLED;
                return List.of(Effect.refund(why));
            default:
                return List.of();
        }
    }

    /** A payment result for this order's payment id; the table of order_saga.rs's module docs. */
    List<Effect> onResult(String outcome) throws Conflict {
        boolean approved = outcome.equals("APPROVED");
        boolean declined = outcome.equals("DECLINED");
        boolean refunded = outcome.equals("REFUNDED");
        if (!approved && !declined && !refunded) {
            throw new Conflict("unknown payment outcome " + outcome);
        }
        switch (phase) {
            case REJECTED:
                throw new Conflict("payment result for order " + orderId + ", which was rejected and asked for no payment");
            case AWAITING_PAYMENT:
                if (approved) {
                    enter(Phase.PAID, null, null);
                    return List.of(Effect.PUBLISH);
                }
                if (declined) {
                    enter(Phase.CANCELLED, Charge.DECLINED, OrderSagaProcessor.PAYMENT_DECLINED);
                    return List.of(Effect.PUBLISH);
                }
                throw conflict(outcome, "no refund was requested");
            case PAID:
                if (approved) {
                    return List.of();
                }
                throw conflict(outcome, declined ? "the charge was approved" : "no refund was requested");
            case REFUND_PENDING:
                if (approved) {
                    return List.of();
                }
                if (refunded) {
                    enter(Phase.REFUNDED, null, OrderSagaProcessor.BUYER_CANCELLED);
                    return List.of(Effect.PUBLISH);
                }
                throw conflict(outcome, "the charge was approved");
            case REFUNDED:
                if (declined) {
                    throw conflict(outcome, "the charge was approved");
                }
                return List.of();
            case CANCELLED:
            default:
                return onResultCancelled(outcome, approved, declined);
        }
    }

    private List<Effect> onResultCancelled(String outcome, boolean approved, boolean declined) throws Conflict {
        switch (charge) {
            case UNANSWERED:
                if (approved) {
                    charge = Charge.REFUND_REQUESTED;
                    return List.of(Effect.refund(OrderSagaProcessor.LATE_APPROVAL));
                }
                if (declined) {
                    charge = Charge.DECLINED;
                    return List.of();
                }
                throw conflict(outcome, "no refund was requested");
            case DECLINED:
                if (approved) {
                    throw conflict(outcome, "the charge was declined");
                }
                if (declined) {
                    return List.of();
                }
                throw conflict(outcome, "no refund was requested");
            case REFUND_REQUESTED:
                if (approved) {
                    return List.of();
                }
                if (declined) {
                    throw conflict(outcome, "the charge was approved");
                }
                charge = Charge.REFUNDED;
                return List.of();
            case REFUNDED:
            default:
                if (declined) {
                    throw conflict(outcome, "the charge was approved");
                }
                return List.of();
        }
    }

    private Conflict conflict(String outcome, String what) {
        return new Conflict("payment result " + outcome + " for order " + orderId + " contradicts what it knows: " + what);
    }

    /** The stored bytes (Avro binary of {@link #SCHEMA}). */
    byte[] encode() {
        ByteArrayOutputStream out = new ByteArrayOutputStream(256);
        BinaryEncoder e = EncoderFactory.get().directBinaryEncoder(out, null);
        try {
            e.writeString(orderId);
            e.writeString(buyerId);
            e.writeString(sellerId);
            e.writeArrayStart();
            e.setItemCount(items.size());
            for (Item item : items) {
                e.startItem();
                e.writeString(item.productId());
                e.writeInt(item.quantity());
                e.writeLong(item.unitPrice());
            }
            e.writeArrayEnd();
            e.writeString(currency);
            e.writeLong(total);
            e.writeString(paymentId);
            e.writeEnum(phase.ordinal());
            if (charge == null) {
                e.writeIndex(0);
                e.writeNull();
            } else {
                e.writeIndex(1);
                e.writeEnum(charge.ordinal());
            }
            writeOptionalString(e, reason);
            e.writeLong(version);
            e.writeArrayStart();
            e.setItemCount(requestIds.size());
            for (String id : requestIds) {
                e.startItem();
                e.writeString(id);
            }
            e.writeArrayEnd();
            e.flush();
        } catch (IOException ex) {
            throw new UncheckedIOException(ex);
        }
        return out.toByteArray();
    }

    /** The state stored as {@code bytes}. */
    static OrderState decode(byte[] bytes) {
        BinaryDecoder d = DecoderFactory.get().binaryDecoder(bytes, null);
        OrderState s = new OrderState();
        try {
            s.orderId = d.readString();
            s.buyerId = d.readString();
            s.sellerId = d.readString();
            s.items = new ArrayList<>();
            for (long n = d.readArrayStart(); n != 0; n = d.arrayNext()) {
                for (long i = 0; i < n; i++) {
                    s.items.add(new Item(d.readString(), d.readInt(), d.readLong()));
                }
            }
            s.currency = d.readString();
            s.total = d.readLong();
            s.paymentId = d.readString();
            s.phase = Phase.values()[d.readEnum()];
            s.charge = d.readIndex() == 0 ? readNull(d) : Charge.values()[d.readEnum()];
            s.reason = d.readIndex() == 0 ? readNull(d) : d.readString();
            s.version = d.readLong();
            s.requestIds = new TreeSet<>();
            for (long n = d.readArrayStart(); n != 0; n = d.arrayNext()) {
                for (long i = 0; i < n; i++) {
                    s.requestIds.add(d.readString());
                }
            }
        } catch (IOException ex) {
            throw new UncheckedIOException("stored order state does not decode", ex);
        }
        return s;
    }

    /** The stored bytes of parked result outcomes (Avro binary of {@link #PARKED_SCHEMA}). */
    static byte[] encodeParked(List<String> outcomes) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(32);
        BinaryEncoder e = EncoderFactory.get().directBinaryEncoder(out, null);
        try {
            e.writeArrayStart();
            e.setItemCount(outcomes.size());
            for (String outcome : outcomes) {
                e.startItem();
                e.writeString(outcome);
            }
            e.writeArrayEnd();
            e.flush();
        } catch (IOException ex) {
            throw new UncheckedIOException(ex);
        }
        return out.toByteArray();
    }

    /** The parked outcomes stored as {@code bytes}. */
    static List<String> decodeParked(byte[] bytes) {
        BinaryDecoder d = DecoderFactory.get().binaryDecoder(bytes, null);
        List<String> outcomes = new ArrayList<>();
        try {
            for (long n = d.readArrayStart(); n != 0; n = d.arrayNext()) {
                for (long i = 0; i < n; i++) {
                    outcomes.add(d.readString());
                }
            }
        } catch (IOException ex) {
            throw new UncheckedIOException("parked payment results do not decode", ex);
        }
        return outcomes;
    }

    private static void writeOptionalString(BinaryEncoder e, String value) throws IOException {
        if (value == null) {
            e.writeIndex(0);
            e.writeNull();
        } else {
            e.writeIndex(1);
            e.writeString(value);
        }
    }

    private static <T> T readNull(BinaryDecoder d) throws IOException {
        d.readNull();
        return null;
    }
}
