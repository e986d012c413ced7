//! SplitMix64: a tiny seeded generator, for reproducible fault draws without a rand dependency.

pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1).
pub(crate) fn unit(state: &mut u64) -> f64 {
    (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// A fixed draw in [0, 1) for `key` (e.g. a phone number) under `seed` and `salt`: the same
/// recipient always gets the same answer.
pub(crate) fn keyed_unit(seed: u64, salt: u64, key: &str) -> f64 {
    // FNV-1a, then one SplitMix64 round to spread the bits.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut state = h ^ seed.rotate_left(17) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    unit(&mut state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_range_and_reproducible() {
        let (mut a, mut b) = (42u64, 42u64);
        let mut below_half = 0;
        for _ in 0..10_000 {
            let x = unit(&mut a);
            assert_eq!(x, unit(&mut b));
            assert!((0.0..1.0).contains(&x));
            if x < 0.5 {
                below_half += 1;
            }
        }
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
    }

    #[test]
    fn keyed_draws_depend_on_key_seed_and_salt() {
        let x = keyed_unit(1, 1, "+447700900123");
        assert_eq!(x, keyed_unit(1, 1, "+447700900123"));
        assert_ne!(x, keyed_unit(2, 1, "+447700900123"));
        assert_ne!(x, keyed_unit(1, 2, "+447700900123"));
        assert_ne!(x, keyed_unit(1, 1, "+447700900124"));
    }
}
