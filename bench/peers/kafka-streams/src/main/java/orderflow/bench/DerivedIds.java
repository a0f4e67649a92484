package orderflow.bench;

import java.nio.charset.StandardCharsets;

/** The port of pipelines/src/ids.rs {@code derived_uuid}: ids derived from other ids (the saga's payment id). */
final class DerivedIds {
    // The 128-bit constants of ids.rs, as (high, low) 64-bit halves.
    private static final long OFFSET_HI = 0x6c62272e07bb0142L;
    private static final long OFFSET_LO = 0x62b821756295c58dL;
    private static final long PRIME_HI = 0x0000000001000000L;
    private static final long PRIME_LO = 0x000000000000013bL;
    private static final long MIX_HI = 0x9e3779b97f4a7c15L;
    private static final long MIX_LO = 0xf39cc0605cedc835L;
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private DerivedIds() {}

    /** The domain of an order's payment id ({@code payment_id_for} in order_saga.rs). */
    static final String PAYMENT_ID_DOMAIN = "orderflow.payment-id.v1";

    /** The payment id of an order's one charge. */
    static String paymentIdFor(String orderId) {
        return derivedUuid(PAYMENT_ID_DOMAIN, orderId);
    }

    /**
     * A UUID-formatted string (version 8) derived from {@code domain} and {@code parts}:
     * 128-bit FNV-1a over the domain and the parts (every part but the last prefixed with
     * its UTF-8 length as a big-endian u64), then the same final mix as ids.rs.
     */
    static String derivedUuid(String domain, String... parts) {
        Hash h = new Hash();
        h.feed(domain.getBytes(StandardCharsets.UTF_8));
        for (int i = 0; i < parts.length; i++) {
            byte[] bytes = parts[i].getBytes(StandardCharsets.UTF_8);
            if (i < parts.length - 1) {
                long len = bytes.length;
                byte[] prefix = new byte[8];
                for (int b = 0; b < 8; b++) {
                    prefix[b] = (byte) (len >>> (56 - 8 * b));
                }
                h.feed(prefix);
            }
            h.feed(bytes);
        }
        // hash ^= hash >> 64
        h.lo ^= h.hi;
        h.mulBy(MIX_HI, MIX_LO);
        // hash ^= hash >> 67
        h.lo ^= h.hi >>> 3;
        h.mulBy(MIX_HI, MIX_LO);
        h.lo ^= h.hi;
        byte[] bytes = new byte[16];
        for (int b = 0; b < 8; b++) {
            bytes[b] = (byte) (h.hi >>> (56 - 8 * b));
            bytes[8 + b] = (byte) (h.lo >>> (56 - 8 * b));
        }
        bytes[6] = (byte) ((bytes[6] & 0x0f) | 0x80);
        bytes[8] = (byte) ((bytes[8] & 0x3f) | 0x80);
        StringBuilder out = new StringBuilder(36);
        for (int b = 0; b < 16; b++) {
            if (b == 4 || b == 6 || b == 8 || b == 10) {
                out.append('-');
            }
            out.append(HEX[(bytes[b] >> 4) & 0xf]).append(HEX[bytes[b] & 0xf]);
        }
        return out.toString();
    }

    /** A u128 as two longs, with the wrapping arithmetic FNV needs. */
    private static final class Hash {
        long hi = OFFSET_HI;
        long lo = OFFSET_LO;

        void feed(byte[] bytes) {
            for (byte b : bytes) {
                lo ^= b & 0xffL;
                mulBy(PRIME_HI, PRIME_LO);
            }
        }

        /** this = this * (mHi, mLo) mod 2^128. */
        void mulBy(long mHi, long mLo) {
            long newHi = unsignedMultiplyHigh(lo, mLo) + hi * mLo + lo * mHi;
            lo = lo * mLo;
            hi = newHi;
        }

        private static long unsignedMultiplyHigh(long a, long b) {
            return Math.multiplyHigh(a, b) + ((a >> 63) & b) + ((b >> 63) & a);
        }
    }
}
