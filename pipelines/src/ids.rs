//! Ids derived from other ids. A processor that creates something (an account, a
//! payment) names it with a hash of the input that caused it, so a replay of that
//! input, after a crash or a producer retry, names it the same and never creates a
//! second one.

/// A UUID-formatted string (version 8, "custom", of RFC 9562) derived from `domain`
/// and `parts`. `domain` names what the id is for (`orderflow.user-id.v1`), so ids of
/// different things never collide. Every part but the last is prefixed with its
/// length, so shifting bytes from one part to the next changes the id.
///
/// The hash is 128-bit FNV-1a with a final mix, written out here because it must never
/// change (std's `DefaultHasher` may change between Rust releases): ids derived by
/// one release are recomputed by the next. It is not a security boundary: these ids
/// are not secrets, only unique.
pub fn derived_uuid(domain: &str, parts: &[&str]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    const MIX: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u128::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(domain.as_bytes());
    if let Some((last, init)) = parts.split_last() {
        for part in init {
            feed(&(part.len() as u64).to_be_bytes());
            feed(part.as_bytes());
        }
        feed(last.as_bytes());
    }
    // FNV moves differences only towards the high bits; xor-shifts and odd multipliers
    // (both invertible, so distinct states stay distinct) spread them over all 128.
    hash ^= hash >> 64;
    hash = hash.wrapping_mul(MIX);
    hash ^= hash >> 67;
    hash = hash.wrapping_mul(MIX);
    hash ^= hash >> 64;
    let mut bytes = hash.to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Lowercase hex in the 8-4-4-4-12 UUID layout, written straight into one string
    // (this runs once per registration and per order: no per-byte formatting).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids already handed out must keep their value: these were computed before the
    /// hash moved here from user_cache.
    #[test]
    fn derived_ids_never_change() {
        assert_eq!(
            derived_uuid("orderflow.user-id.v1", &["r1", "ann@example.com"]),
            "06b78dd5-5841-830c-a367-ffb082086273"
        );
        assert_eq!(
            derived_uuid("orderflow.user-id.v1", &["", ""]),
            "749eaf6c-3949-8624-93fa-8b7f82d5be61"
        );
    }

    #[test]
    fn domains_and_part_boundaries_matter() {
        let a = derived_uuid("d.v1", &["ab", "c"]);
        assert_ne!(a, derived_uuid("d.v1", &["a", "bc"]));
        assert_ne!(a, derived_uuid("e.v1", &["ab", "c"]));
        assert_eq!(a, derived_uuid("d.v1", &["ab", "c"]));
    }
}
