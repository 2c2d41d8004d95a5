//! HPACK Huffman code (RFC 7541 Appendix B).
//!
//! The code is canonical: codes are assigned in order of (length, symbol), so the table is fully
//! described by each symbol's code length. The lengths below are transcribed from the appendix;
//! the codes are derived from them at compile time, and the tests check the derivation against
//! codes printed in the RFC and against the Kraft equality (the code is complete).

/// Code length in bits of every symbol: bytes 0..=255, then EOS (256).
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0..=15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16..=31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32..=47
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48..=63
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64..=79
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80..=95
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96..=111
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112..=127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128..=143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144..=159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160..=175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176..=191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192..=207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208..=223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224..=239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240..=255
    30, // 256..=256
];

/// The EOS symbol; it must never appear in a decoded string.
const EOS: usize = 256;

/// Longest code, in bits.
const MAX_LEN: usize = 30;

/// Canonical code of every symbol, right-aligned.
const CODES: [u32; 257] = canonical_codes();

/// Symbols sorted by (length, symbol), as the canonical construction visits them.
const SORTED: [u16; 257] = sorted_symbols();

/// For each length L: number of codes of length L, and the first code of that length.
const COUNTS: [u32; MAX_LEN + 1] = counts();
const FIRST_CODE: [u32; MAX_LEN + 1] = first_codes();
/// Index into SORTED of the first symbol of each length.
const FIRST_INDEX: [u16; MAX_LEN + 1] = first_indexes();

const fn sorted_symbols() -> [u16; 257] {
    let mut out = [0u16; 257];
    let mut n = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        let mut sym = 0;
        while sym < 257 {
            if CODE_LENGTHS[sym] as usize == len {
                out[n] = sym as u16;
                n += 1;
            }
            sym += 1;
        }
        len += 1;
    }
    assert!(n == 257, "every symbol has a code length between 1 and 30");
    out
}

const fn counts() -> [u32; MAX_LEN + 1] {
    let mut out = [0u32; MAX_LEN + 1];
    let mut sym = 0;
    while sym < 257 {
        out[CODE_LENGTHS[sym] as usize] += 1;
        sym += 1;
    }
    out
}

const fn first_codes() -> [u32; MAX_LEN + 1] {
    let counts = counts();
    let mut out = [0u32; MAX_LEN + 1];
    let mut code = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        code = (code + counts[len - 1]) << 1;
        out[len] = code;
        len += 1;
    }
    out
}

const fn first_indexes() -> [u16; MAX_LEN + 1] {
    let counts = counts();
    let mut out = [0u16; MAX_LEN + 1];
    let mut index = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        out[len] = index;
        index += counts[len] as u16;
        len += 1;
    }
    out
}

const fn canonical_codes() -> [u32; 257] {
    let sorted = sorted_symbols();
    let first = first_codes();
    let firsts = first_indexes();
    let mut out = [0u32; 257];
    let mut i = 0;
    while i < 257 {
        let sym = sorted[i] as usize;
        let len = CODE_LENGTHS[sym] as usize;
        out[sym] = first[len] + (i as u32 - firsts[len] as u32);
        i += 1;
    }
    out
}

/// Errors decoding a Huffman string (all are HPACK COMPRESSION_ERRORs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    #[error("Huffman string contains EOS")]
    Eos,
    /// Padding longer than 7 bits, or not the most significant bits of EOS (all ones).
    #[error("invalid Huffman padding")]
    Padding,
}

/// Appends the Huffman encoding of `input` to `out`.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    out.reserve(encoded_len(input));
    for &byte in input {
        let len = u32::from(CODE_LENGTHS[byte as usize]);
        acc = (acc << len) | u64::from(CODES[byte as usize]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

/// Length in bytes of the Huffman encoding of `input`.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| CODE_LENGTHS[b as usize] as usize)
        .sum();
    bits.div_ceil(8)
}

/// Decodes a Huffman string, appending to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    out.reserve(input.len() * 8 / 5 + 1);
    let mut code: u32 = 0;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(FIRST_CODE[len]);
            if offset < COUNTS[len] {
                let sym = SORTED[FIRST_INDEX[len] as usize + offset as usize] as usize;
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Unreachable for a complete code, kept as a guard.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // Whatever is left must be a strict prefix of EOS: at most 7 bits, all ones.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn derived_codes_match_the_rfc() {
        // Rows printed in RFC 7541 Appendix B: (symbol, code, length).
        for (sym, code, len) in [
            (0usize, 0x1ff8u32, 13u8),
            (1, 0x7fffd8, 23),
            (10, 0x3ffffffc, 30),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'e' as usize, 0x5, 5),
            (b'z' as usize, 0x7b, 7),
            (b'~' as usize, 0x1ffd, 13),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ] {
            assert_eq!((CODES[sym], CODE_LENGTHS[sym]), (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn the_code_is_complete() {
        // Kraft equality: sum of 2^-len over all symbols is exactly 1.
        let total: u64 = CODE_LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - l as usize))
            .sum();
        assert_eq!(total, 1u64 << MAX_LEN);
    }

    #[test]
    fn rfc_examples_round_trip() {
        // RFC 7541 C.4.1 and C.6.1 strings.
        for (text, hex) in [
            ("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
            ("no-cache", "a8eb10649cbf"),
            ("custom-key", "25a849e95ba97d7f"),
            ("custom-value", "25a849e95bb8e8b4bf"),
            ("private", "aec3771a4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07abe941054d444a8200595040b8166e082a62d1bff",
            ),
            (
                "https://www.example.com",
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
            ),
        ] {
            let mut encoded = Vec::new();
            encode(text.as_bytes(), &mut encoded);
            assert_eq!(hex::encode(&encoded), hex, "{text}");
            let mut decoded = Vec::new();
            decode(&encoded, &mut decoded).unwrap();
            assert_eq!(decoded, text.as_bytes());
        }
    }

    #[test]
    fn bad_padding_and_eos_are_rejected() {
        // "0" is 00000 (5 bits) + 3 one-bits of padding = 0x07; zero padding is invalid.
        let mut out = Vec::new();
        assert_eq!(decode(&[0x07], &mut out), Ok(()));
        assert_eq!(decode(&[0x00], &mut out), Err(HuffmanError::Padding));
        // A whole byte of ones is 8 bits of padding: too long.
        assert_eq!(decode(&[0x07, 0xff], &mut out), Err(HuffmanError::Padding));
        // EOS itself (30 ones) inside the string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut encoded = Vec::new();
            encode(&input, &mut encoded);
            prop_assert_eq!(encoded.len(), encoded_len(&input));
            let mut decoded = Vec::new();
            decode(&encoded, &mut decoded).unwrap();
            prop_assert_eq!(decoded, input);
        }

        #[test]
        fn decoding_garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            let _ = decode(&input, &mut out);
            prop_assert!(out.len() <= input.len() * 8 / 5 + 1);
        }
    }
}
