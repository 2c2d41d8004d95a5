//! RFC 7541 Appendix C examples, encoder round trips and limits.

use super::*;
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

fn pairs(fields: &[Field]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            (
                String::from_utf8(f.name.to_vec()).unwrap(),
                String::from_utf8(f.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn c1_integers() {
    let mut out = Vec::new();
    encode_int(10, 5, 0, &mut out);
    assert_eq!(out, [0x0a]);
    out.clear();
    encode_int(1337, 5, 0, &mut out);
    assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    out.clear();
    encode_int(42, 8, 0, &mut out);
    assert_eq!(out, [0x2a]);
    assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
    assert_eq!(decode_int(&[0x1f, 0x9a], 5), Err(HpackError::Truncated));
    // 2^32 does not fit.
    assert_eq!(
        decode_int(&[0x1f, 0xe1, 0xff, 0xff, 0xff, 0x0f], 5),
        Err(HpackError::IntegerOverflow)
    );
    // Endless continuation bytes are cut off, not looped over.
    assert_eq!(
        decode_int(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80], 5),
        Err(HpackError::IntegerOverflow)
    );
}

#[test]
fn c2_field_representations() {
    let mut d = Decoder::new(4096);
    let fields = d
        .decode(
            &unhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
            1 << 16,
        )
        .unwrap();
    assert_eq!(pairs(&fields), expect(&[("custom-key", "custom-header")]));
    assert_eq!(d.table_size(), 55);
    let fields = d
        .decode(&unhex("040c 2f73 616d 706c 652f 7061 7468"), 1 << 16)
        .unwrap();
    assert_eq!(pairs(&fields), expect(&[(":path", "/sample/path")]));
    assert_eq!(d.table_size(), 55);
    let fields = d
        .decode(
            &unhex("1008 7061 7373 776f 7264 0673 6563 7265 74"),
            1 << 16,
        )
        .unwrap();
    assert_eq!(pairs(&fields), expect(&[("password", "secret")]));
    assert!(fields[0].sensitive);
    let fields = d.decode(&[0x82], 1 << 16).unwrap();
    assert_eq!(pairs(&fields), expect(&[(":method", "GET")]));
}

const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];
const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];
const REQUESTS: [&[(&str, &str)]; 3] = [
    &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ],
    &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ],
    &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ],
];

#[test]
fn c3_and_c4_request_sequences() {
    for blocks in [C3, C4] {
        let mut d = Decoder::new(4096);
        for ((block, want), size) in blocks.iter().zip(REQUESTS).zip([57, 110, 164]) {
            let fields = d.decode(&unhex(block), 1 << 16).unwrap();
            assert_eq!(pairs(&fields), expect(want));
            assert_eq!(d.table_size(), size);
        }
    }
}

#[test]
fn encoder_reproduces_c4_byte_for_byte() {
    let mut e = Encoder::new(4096);
    for (block, want) in C4.iter().zip(REQUESTS) {
        let fields: Vec<Field> = want
            .iter()
            .map(|(n, v)| Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let mut out = Vec::new();
        e.encode(&fields, &mut out);
        assert_eq!(hex::encode(out), hex::encode(unhex(block)));
    }
}

#[test]
fn c5_and_c6_response_sequences_with_eviction() {
    let c5 = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
    ];
    let c6 = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];
    let first = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    let second = [
        (":status", "307"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    let third = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ];
    let mut d = Decoder::new(256);
    for (block, want) in c5.iter().zip([&first[..], &second[..]]) {
        assert_eq!(
            pairs(&d.decode(&unhex(block), 1 << 16).unwrap()),
            expect(want)
        );
        assert_eq!(d.table_size(), 222);
    }
    let mut d = Decoder::new(256);
    for ((block, want), size) in c6
        .iter()
        .zip([&first[..], &second[..], &third[..]])
        .zip([222, 222, 215])
    {
        assert_eq!(
            pairs(&d.decode(&unhex(block), 1 << 16).unwrap()),
            expect(want)
        );
        assert_eq!(d.table_size(), size);
    }
}

#[test]
fn bad_blocks_are_errors() {
    let mut d = Decoder::new(4096);
    assert_eq!(d.decode(&[0x80], 1 << 16), Err(HpackError::BadIndex(0)));
    assert_eq!(d.decode(&[0xbe], 1 << 16), Err(HpackError::BadIndex(62)));
    // A table size update above what we allow.
    assert!(matches!(
        d.decode(&[0x3f, 0xe2, 0x1f], 1 << 16),
        Err(HpackError::BadSizeUpdate(_))
    ));
    // A size update after a field.
    assert!(matches!(
        d.decode(&[0x82, 0x20], 1 << 16),
        Err(HpackError::BadSizeUpdate(0))
    ));
    // A string longer than the block.
    assert_eq!(
        d.decode(&[0x40, 0x7f, 0x10, b'a'], 1 << 16),
        Err(HpackError::Truncated)
    );
}

#[test]
fn header_list_limit_is_enforced_but_the_table_stays_in_sync() {
    let mut e = Encoder::new(4096);
    let mut d = Decoder::new(4096);
    let big = vec![
        Field::new(&b"x-big"[..], vec![b'v'; 200]),
        Field::new(&b"x-small"[..], &b"1"[..]),
    ];
    let mut block = Vec::new();
    e.encode(&big, &mut block);
    assert_eq!(
        d.decode(&block, 100),
        Err(HpackError::HeaderListTooLarge { limit: 100 })
    );
    // The entries were still added, so the next block (which refers to them) decodes.
    let mut block = Vec::new();
    e.encode(&big, &mut block);
    assert!(block.len() < 10, "second block uses the dynamic table");
    assert_eq!(d.decode(&block, 1 << 16).unwrap().len(), 2);
}

#[test]
fn credentials_are_never_indexed() {
    let mut e = Encoder::new(4096);
    let mut d = Decoder::new(4096);
    let fields = vec![Field::new(
        &b"authorization"[..],
        &b"Bearer secret-token"[..],
    )];
    let mut block = Vec::new();
    e.encode(&fields, &mut block);
    assert_eq!(block[0] & 0xf0, 0x10);
    let decoded = d.decode(&block, 1 << 16).unwrap();
    assert!(decoded[0].sensitive);
    assert_eq!(d.table_size(), 0);
}

fn arb_field() -> impl Strategy<Value = Field> {
    let name = prop_oneof![
        Just(":path".to_owned()),
        Just("content-type".to_owned()),
        Just("grpc-status".to_owned()),
        Just("authorization".to_owned()),
        "[a-z][a-z0-9-]{0,20}",
    ];
    let value = proptest::collection::vec(any::<u8>(), 0..80);
    (name, value).prop_map(|(n, v)| Field::new(n.into_bytes(), v))
}

proptest! {
    #[test]
    fn blocks_round_trip_with_shared_state(
        blocks in proptest::collection::vec(proptest::collection::vec(arb_field(), 0..12), 1..8),
        table_sizes in proptest::collection::vec(prop_oneof![Just(0usize), Just(64), Just(256), Just(4096)], 1..8),
    ) {
        let mut e = Encoder::new(4096);
        let mut d = Decoder::new(4096);
        for (i, block_fields) in blocks.iter().enumerate() {
            if let Some(&size) = table_sizes.get(i) {
                e.set_max_table_size(size);
            }
            let mut block = Vec::new();
            e.encode(block_fields, &mut block);
            let decoded = d.decode(&block, usize::MAX).unwrap();
            prop_assert_eq!(pairs_raw(&decoded), pairs_raw(block_fields));
            prop_assert!(d.table_size() <= 4096);
        }
    }

    #[test]
    fn garbage_never_panics_or_grows_the_table(block in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut d = Decoder::new(4096);
        let _ = d.decode(&block, 16 * 1024);
        prop_assert!(d.table_size() <= 4096);
    }
}

fn pairs_raw(fields: &[Field]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .map(|f| (f.name.to_vec(), f.value.to_vec()))
        .collect()
}
