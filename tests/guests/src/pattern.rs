//! The data the `cmo` test checks: a pattern the build writes into the
//! guest's `.data`, and the pattern the harness writes into the initrd.

/// Words in the `.data` array: 64 KiB.
pub const DATA_WORDS: usize = 64 * 1024 / 8;

/// Word `i` of the `.data` pattern: a SplitMix64 step, so every word differs
/// and none is zero or a small number that stale memory might hold.
pub const fn data_word(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The whole `.data` pattern, for a `static` initialiser.
pub const fn data_pattern<const N: usize>() -> [u64; N] {
    let mut words = [0; N];
    let mut i = 0;
    while i < N {
        words[i] = data_word(i);
        i += 1;
    }
    words
}

/// Byte `i` of the initrd the harness passes: `(i * 7 + 3) & 0xff`.
pub const fn initrd_byte(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) & 0xff) as u8
}

/// The first position where `got` differs from `want(i)`: (index, got, want).
pub fn first_mismatch<T: PartialEq + Copy>(
    got: impl IntoIterator<Item = T>,
    want: impl Fn(usize) -> T,
) -> Option<(usize, T, T)> {
    got.into_iter().enumerate().find(|&(i, g)| g != want(i)).map(|(i, g)| (i, g, want(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_pattern_is_distinct_and_nonzero() {
        let words = data_pattern::<DATA_WORDS>();
        assert_eq!(words[5], data_word(5));
        let mut sorted = words.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DATA_WORDS);
        assert!(words.iter().all(|&w| w > 0xffff_ffff));
    }

    #[test]
    fn initrd_bytes() {
        assert_eq!(initrd_byte(0), 3);
        assert_eq!(initrd_byte(1), 10);
        assert_eq!(initrd_byte(36), 255);
        assert_eq!(initrd_byte(37), 6);
    }

    #[test]
    fn mismatch() {
        let good: Vec<u8> = (0..1000).map(initrd_byte).collect();
        assert_eq!(first_mismatch(good.iter().copied(), initrd_byte), None);
        let mut bad = good.clone();
        bad[700] ^= 1;
        assert_eq!(first_mismatch(bad.iter().copied(), initrd_byte), Some((700, good[700] ^ 1, good[700])));
    }
}
