//! Deterministic disk contents, shared with the host.
//!
//! The self-tests write data the host can regenerate byte for byte, so that
//! after the guest has exited `x.py test` can check the disk image without
//! the guest sending any data back. The data is a pure function of a 64-bit
//! *seed* and the *absolute byte offset on the disk*:
//!
//! ```text
//! the 8 bytes at disk offset 8*k (little endian) = splitmix64(seed, k)
//! splitmix64(seed, k) = mix(seed + (k + 1) * 0x9e3779b97f4a7c15)      (mod 2^64)
//! mix(z): z ^= z >> 30; z *= 0xbf58476d1ce4e5b9;
//!         z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31
//! ```
//!
//! that is, word `k` of the disk is output number `k` of Sebastiano Vigna's
//! SplitMix64 generator started at `seed`. Because the position goes into
//! the formula, a region's data does not depend on how it was cut into
//! requests, and a sector copied to the wrong place is caught. The host side
//! is `tests/qemu/blk.py` (`pattern()`); change both together.
//!
//! Each region written is announced with its CRC-32 (IEEE 802.3, the one
//! `zlib.crc32` computes) so the host can cross-check its regeneration
//! against what the guest actually had in its buffer.

/// SplitMix64's increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Output number `index` of SplitMix64 started at `seed`.
pub const fn word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// A seed for one purpose (`tag`) derived from the command line's base seed,
/// so regions written for different purposes never share data.
#[cfg(feature = "selftest")]
pub const fn derive_seed(base: u64, tag: u64) -> u64 {
    word(base, tag ^ 0x5eed_0000_0000)
}

/// Fills `buffer` with the pattern of `seed` as it must appear at disk byte
/// offset `disk_offset` (a multiple of 8; `buffer.len()` too: sectors are).
#[cfg(feature = "selftest")]
pub fn fill(seed: u64, disk_offset: u64, buffer: &mut [u8]) {
    let first = disk_offset / 8;
    for (i, chunk) in buffer.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(seed, first + i as u64).to_le_bytes());
    }
}

/// The first byte of `buffer` that differs from the pattern of `seed` at
/// `disk_offset`, as (index in `buffer`, found, expected).
#[cfg(feature = "selftest")]
pub fn first_mismatch(seed: u64, disk_offset: u64, buffer: &[u8]) -> Option<(usize, u8, u8)> {
    let first = disk_offset / 8;
    for (i, chunk) in buffer.chunks_exact(8).enumerate() {
        let expected = word(seed, first + i as u64).to_le_bytes();
        if chunk != expected {
            let j = (0..8).find(|&j| chunk[j] != expected[j]).unwrap_or(0);
            return Some((i * 8 + j, chunk[j], expected[j]));
        }
    }
    None
}

/// The first non-zero byte of `buffer`, as (index, value).
#[cfg(feature = "selftest")]
pub fn first_nonzero(buffer: &[u8]) -> Option<(usize, u8)> {
    buffer.iter().position(|&b| b != 0).map(|i| (i, buffer[i]))
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xedb88320, initial and final
/// XOR 0xffffffff): what `zlib.crc32` returns on the host.
#[cfg(feature = "selftest")]
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Continues a CRC-32 over more data (`crc32_update(crc32(a), b) == crc32(a ++ b)`).
#[cfg(feature = "selftest")]
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(feature = "selftest")]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// A small deterministic random number source (SplitMix64 as a stream) for
/// choosing offsets, sizes and submission orders.
pub struct Rng {
    seed: u64,
    next: u64,
}

impl Rng {
    /// A stream started at `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { seed, next: 0 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let value = word(self.seed, self.next);
        self.next += 1;
        value
    }

    /// A number in `0..bound` (`bound` > 0; the tiny modulo bias does not
    /// matter for choosing test offsets).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    #[cfg(feature = "selftest")]
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Known answers, so that a change to the generator or the CRC is caught in
/// the guest before the host check disagrees (the host's unit tests pin the
/// same values).
#[cfg(feature = "selftest")]
pub fn self_check() -> Result<(), alloc::string::String> {
    use alloc::format;
    // SplitMix64 from seed 0: the reference implementation's first outputs.
    let expected = [
        0xe220_a839_7b1d_cdaf_u64,
        0x6e78_9e6a_a1b9_65f4,
        0x06c4_5d18_8009_454f,
    ];
    for (k, want) in expected.iter().enumerate() {
        let got = word(0, k as u64);
        if got != *want {
            return Err(format!(
                "splitmix64(0, {k}) = {got:#018x}, want {want:#018x}"
            ));
        }
    }
    // CRC-32 check value of the standard test string.
    let crc = crc32(b"123456789");
    if crc != 0xcbf4_3926 {
        return Err(format!(
            "crc32(\"123456789\") = {crc:#010x}, want 0xcbf43926"
        ));
    }
    if crc32_update(crc32(b"1234"), b"56789") != crc {
        return Err("crc32 does not continue across pieces".into());
    }
    // Data at an offset equals the tail of data from 0.
    let mut whole = [0u8; 64];
    let mut tail = [0u8; 32];
    fill(7, 0, &mut whole);
    fill(7, 32, &mut tail);
    if whole[32..] != tail {
        return Err("pattern depends on where a fill starts".into());
    }
    if first_mismatch(7, 0, &whole).is_some() {
        return Err("first_mismatch reports a difference in identical data".into());
    }
    whole[13] ^= 1;
    if first_mismatch(7, 0, &whole).map(|m| m.0) != Some(13) {
        return Err("first_mismatch misses a flipped bit".into());
    }
    Ok(())
}
