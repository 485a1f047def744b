//! The data pattern the guest writes and the host checks (one definition for both: the
//! host's tests include this file).

/// Byte `j` of sector `s` of the pattern for `seed`: the first 8 bytes are
/// `(seed << 32 | s)` little-endian, the rest `(s * 37 + j * 13 + seed) mod 256`.
pub fn pattern_byte(seed: u64, s: u64, j: usize) -> u8 {
    if j < 8 {
        ((seed << 32) | (s & 0xffff_ffff)).to_le_bytes()[j]
    } else {
        (s.wrapping_mul(37)
            .wrapping_add(j as u64 * 13)
            .wrapping_add(seed)
            & 0xff) as u8
    }
}
