package orderflow.bench;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Random;
import java.util.TreeSet;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;

/**
 * {@code --self-test}, run by the Maven build on the built jar: the derived-id port against
 * ids.rs's vectors and a BigInteger reference, the saga's totals, the state's bytes against
 * its declared Avro schema and a few transitions. Exits non-zero on any failure.
 */
final class SelfTest {
    private int passed;
    private int failed;

    private SelfTest() {}

    /** Runs every check, prints the failures and a count; true when none failed. */
    static boolean run() {
        SelfTest t = new SelfTest();
        t.derivedIds();
        t.totals();
        t.stateCodec();
        t.transitions();
        System.out.printf("self-test: %d passed, %d failed%n", t.passed, t.failed);
        return t.failed == 0;
    }

    private void check(String what, Object expected, Object actual) {
        if (Objects.equals(expected, actual)) {
            passed++;
        } else {
            failed++;
            System.out.printf("FAILED %s: expected %s, got %s%n", what, expected, actual);
        }
    }

    private void derivedIds() {
        // The vectors of ids.rs's derived_ids_never_change.
        check("derived id r1/ann", "06b78dd5-5841-830c-a367-ffb082086273",
                DerivedIds.derivedUuid("orderflow.user-id.v1", "r1", "ann@example.com"));
        check("derived id of empty parts", "749eaf6c-3949-8624-93fa-8b7f82d5be61",
                DerivedIds.derivedUuid("orderflow.user-id.v1", "", ""));
        // domains_and_part_boundaries_matter
        String a = DerivedIds.derivedUuid("d.v1", "ab", "c");
        check("part boundaries matter", false, a.equals(DerivedIds.derivedUuid("d.v1", "a", "bc")));
        check("domains matter", false, a.equals(DerivedIds.derivedUuid("e.v1", "ab", "c")));
        check("derived ids are stable", a, DerivedIds.derivedUuid("d.v1", "ab", "c"));
        // The two-long arithmetic against a plain BigInteger transcription of ids.rs.
        Random random = new Random(42);
        int mismatches = 0;
        for (int i = 0; i < 500; i++) {
            String[] parts = new String[random.nextInt(4)];
            for (int p = 0; p < parts.length; p++) {
                StringBuilder sb = new StringBuilder();
                int len = random.nextInt(40);
                for (int c = 0; c < len; c++) {
                    sb.appendCodePoint(random.nextInt(4) == 0 ? 0x80 + random.nextInt(0x3000) : 0x20 + random.nextInt(95));
                }
                parts[p] = sb.toString();
            }
            String domain = "orderflow.test-" + i + ".v1";
            if (!DerivedIds.derivedUuid(domain, parts).equals(referenceUuid(domain, parts))) {
                mismatches++;
            }
        }
        check("derived ids equal the BigInteger reference (500 inputs)", 0, mismatches);
        check("payment id format", true,
                DerivedIds.paymentIdFor("o-1").matches("[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
    }

    private static String referenceUuid(String domain, String... parts) {
        BigInteger mask = BigInteger.ONE.shiftLeft(128).subtract(BigInteger.ONE);
        BigInteger prime = new BigInteger("0000000001000000000000000000013b", 16);
        BigInteger mix = new BigInteger("9e3779b97f4a7c15f39cc0605cedc835", 16);
        BigInteger[] hash = {new BigInteger("6c62272e07bb014262b821756295c58d", 16)};
        java.util.function.Consumer<byte[]> feed = bytes -> {
            for (byte b : bytes) {
                hash[0] = hash[0].xor(BigInteger.valueOf(b & 0xff)).multiply(prime).and(mask);
            }
        };
        feed.accept(domain.getBytes(StandardCharsets.UTF_8));
        for (int i = 0; i < parts.length; i++) {
            byte[] bytes = parts[i].getBytes(StandardCharsets.UTF_8);
            if (i < parts.length - 1) {
                feed.accept(java.nio.ByteBuffer.allocate(8).putLong(bytes.length).array());
            }
            feed.accept(bytes);
        }
        BigInteger h = hash[0];
        h = h.xor(h.shiftRight(64));
        h = h.multiply(mix).and(mask);
        h = h.xor(h.shiftRight(67));
        h = h.multiply(mix).and(mask);
        h = h.xor(h.shiftRight(64));
        String hex = String.format("%032x", h);
        char[] c = hex.toCharArray();
        int b6 = (Integer.parseInt(hex.substring(12, 14), 16) & 0x0f) | 0x80;
        int b8 = (Integer.parseInt(hex.substring(16, 18), 16) & 0x3f) | 0x80;
        String fixed = new String(c, 0, 12) + String.format("%02x", b6) + hex.substring(14, 16)
                + String.format("%02x", b8) + hex.substring(18);
        return fixed.substring(0, 8) + "-" + fixed.substring(8, 12) + "-" + fixed.substring(12, 16) + "-"
                + fixed.substring(16, 20) + "-" + fixed.substring(20);
    }

    private static OrderState.Item item(int quantity, long unitPrice) {
        return new OrderState.Item("p", quantity, unitPrice);
    }

    private void totals() {
        // order_saga.rs's totals_use_checked_arithmetic
        check("total of nothing", 0L, OrderSagaProcessor.orderTotal(List.of()));
        check("total", 5_998L, OrderSagaProcessor.orderTotal(List.of(item(3, 1_999), item(1, 1))));
        check("line overflow", null, OrderSagaProcessor.orderTotal(List.of(item(2, Long.MAX_VALUE / 2 + 1))));
        check("sum overflow", null, OrderSagaProcessor.orderTotal(List.of(item(1, Long.MAX_VALUE), item(1, 1))));
        check("max total", Long.MAX_VALUE, OrderSagaProcessor.orderTotal(List.of(item(1, Long.MAX_VALUE), item(1, 0))));
        check("25 distinct currencies", 25, OrderSagaProcessor.CURRENCIES.size());
    }

    private static OrderState sample() {
        OrderState s = new OrderState();
        s.orderId = "o-1";
        s.buyerId = "b-1";
        s.sellerId = "s-1";
        s.items = List.of(new OrderState.Item("p-1", 2, 1_250), new OrderState.Item("p-2", 1, -0));
        s.currency = "EUR";
        s.total = 2_500;
        s.paymentId = DerivedIds.paymentIdFor("o-1");
        s.phase = OrderState.Phase.CANCELLED;
        s.charge = OrderState.Charge.REFUND_REQUESTED;
        s.reason = "PAYMENT_TIMEOUT";
        s.version = 2;
        s.requestIds = new TreeSet<>(List.of("r-2", "r-1"));
        return s;
    }

    private void stateCodec() {
        OrderState s = sample();
        byte[] bytes = s.encode();
        check("state round trip", s, OrderState.decode(bytes));
        try {
            GenericRecord r = new GenericDatumReader<GenericRecord>(OrderState.SCHEMA)
                    .read(null, DecoderFactory.get().binaryDecoder(bytes, null));
            check("state bytes follow the schema: charge", "REFUND_REQUESTED", r.get("charge").toString());
            check("state bytes follow the schema: request ids", "[r-1, r-2]", r.get("request_ids").toString());
            check("state bytes follow the schema: version", 2L, r.get("version"));
            List<?> parked = new GenericDatumReader<List<?>>(OrderState.PARKED_SCHEMA).read(null,
                    DecoderFactory.get().binaryDecoder(OrderState.encodeParked(List.of("APPROVED", "DECLINED")), null));
            check("parked bytes follow the schema", "[APPROVED, DECLINED]", parked.toString());
        } catch (java.io.IOException | RuntimeException e) {
            check("state bytes decode with the schema", null, e.toString());
        }
        s.charge = null;
        s.reason = null;
        check("state round trip without charge and reason", s, OrderState.decode(s.encode()));
        check("parked round trip", List.of("APPROVED"), OrderState.decodeParked(OrderState.encodeParked(List.of("APPROVED"))));
    }

    private List<Object> outcome(OrderState s, String result) {
        List<Object> seen = new ArrayList<>();
        try {
            seen.addAll(s.onResult(result));
        } catch (OrderState.Conflict e) {
            seen.add("conflict");
        }
        seen.add(s.phase);
        seen.add(s.charge);
        seen.add(s.reason);
        return seen;
    }

    private void transitions() {
        OrderState s = sample();
        s.phase = OrderState.Phase.AWAITING_PAYMENT;
        s.charge = null;
        s.reason = null;
        check("approved pays", java.util.Arrays.asList(OrderState.Effect.PUBLISH, OrderState.Phase.PAID, null, null),
                outcome(s, "APPROVED"));
        check("approved again changes nothing", java.util.Arrays.asList(OrderState.Phase.PAID, null, null),
                outcome(s, "APPROVED"));
        check("declined after approved conflicts", java.util.Arrays.asList("conflict", OrderState.Phase.PAID, null, null),
                outcome(s, "DECLINED"));
        check("cancel of a paid order asks for a refund", List.of(OrderState.Effect.refund("BUYER_CANCELLED")),
                s.onCancel("  "));
        check("refunded ends it", java.util.Arrays.asList(OrderState.Effect.PUBLISH, OrderState.Phase.REFUNDED, null,
                "BUYER_CANCELLED"), outcome(s, "REFUNDED"));
        OrderState d = sample();
        d.phase = OrderState.Phase.AWAITING_PAYMENT;
        d.charge = null;
        d.reason = null;
        check("declined cancels", java.util.Arrays.asList(OrderState.Effect.PUBLISH, OrderState.Phase.CANCELLED,
                OrderState.Charge.DECLINED, "PAYMENT_DECLINED"), outcome(d, "DECLINED"));
        OrderState late = sample();
        late.charge = OrderState.Charge.UNANSWERED;
        late.reason = "PAYMENT_TIMEOUT";
        check("a late approval is refunded", java.util.Arrays.asList(OrderState.Effect.refund("LATE_APPROVAL"),
                OrderState.Phase.CANCELLED, OrderState.Charge.REFUND_REQUESTED, "PAYMENT_TIMEOUT"), outcome(late, "APPROVED"));
    }
}
