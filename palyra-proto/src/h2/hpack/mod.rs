//! HPACK header compression (RFC 7541): integer and string primitives, Huffman coding, the
//! static and dynamic tables, and the decoder and encoder used by the HTTP/2 machine.
//!
//! The decoder bounds everything a peer controls: integers (no more than 2^32 - 1), string
//! lengths (by the bytes actually present), the dynamic table (by the size we advertised), and
//! the decoded header list (by `max_header_list_size`, measured as RFC 9113 does: name + value
//! + 32 per field).

pub mod huffman;
mod table;

pub use table::{DynamicTable, STATIC_TABLE};

use bytes::Bytes;

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Lowercase name (pseudo-headers start with `:`).
    pub name: Bytes,
    /// Value.
    pub value: Bytes,
    /// The sender asked that the field never be indexed (RFC 7541 6.2.3).
    pub sensitive: bool,
}

impl Field {
    /// A non-sensitive field.
    pub fn new(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            sensitive: false,
        }
    }

    /// Size as counted for tables and header list limits: name + value + 32.
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// HPACK decoding errors; every one is an HTTP/2 COMPRESSION_ERROR except `HeaderListTooLarge`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ended inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit in 32 bits.
    #[error("HPACK integer overflow")]
    IntegerOverflow,
    /// An index refers to no table entry.
    #[error("HPACK index {0} out of range")]
    BadIndex(usize),
    /// Huffman decoding failed.
    #[error(transparent)]
    Huffman(#[from] huffman::HuffmanError),
    /// A dynamic table size update above the limit we advertised, or in the wrong place.
    #[error("invalid dynamic table size update {0}")]
    BadSizeUpdate(usize),
    /// The decoded header list exceeds the limit (the block was still processed, so the
    /// table stays in sync: this is a stream error, not a connection error).
    #[error("header list larger than {limit} bytes")]
    HeaderListTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Decodes an integer with an `prefix`-bit prefix at the start of `buf`; returns it and the
/// bytes consumed.
pub fn decode_int(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *buf.first().ok_or(HpackError::Truncated)? & mask;
    if first < mask {
        return Ok((first as usize, 1));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    for (i, &byte) in buf[1..].iter().enumerate() {
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok((value as usize, i + 2));
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
    Err(HpackError::Truncated)
}

/// Appends `value` as an integer with a `prefix`-bit prefix; `flags` fill the bits above it.
pub fn encode_int(value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = ((1u16 << prefix) - 1) as usize;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn decode_string(buf: &[u8]) -> Result<(Bytes, usize), HpackError> {
    let huffman = *buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, used) = decode_int(buf, 7)?;
    let end = used.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(used..end).ok_or(HpackError::Truncated)?;
    let value = if huffman {
        let mut out = Vec::new();
        huffman::decode(raw, &mut out)?;
        Bytes::from(out)
    } else {
        Bytes::copy_from_slice(raw)
    };
    Ok((value, end))
}

fn encode_string(value: &[u8], out: &mut Vec<u8>) {
    let huffman_len = huffman::encoded_len(value);
    if huffman_len < value.len() {
        encode_int(huffman_len, 7, 0x80, out);
        huffman::encode(value, out);
    } else {
        encode_int(value.len(), 7, 0, out);
        out.extend_from_slice(value);
    }
}

/// The receiving side's HPACK state.
pub struct Decoder {
    table: DynamicTable,
    /// The largest table size we allow the peer's encoder to use (our SETTINGS_HEADER_TABLE_SIZE).
    max_allowed: usize,
}

impl Decoder {
    /// A decoder allowing the peer a dynamic table of up to `max_table_size` bytes.
    pub fn new(max_table_size: usize) -> Self {
        Self {
            table: DynamicTable::new(max_table_size),
            max_allowed: max_table_size,
        }
    }

    /// Current dynamic table size in bytes.
    pub fn table_size(&self) -> usize {
        self.table.size()
    }

    /// Decodes one complete header block. Fields beyond `max_header_list_size` are not kept,
    /// but the block is processed to the end so the dynamic table stays in sync.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_header_list_size: usize,
    ) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let byte = block[pos];
            let buf = &block[pos..];
            let field = if byte & 0x80 != 0 {
                // Indexed field (6.1).
                let (index, used) = decode_int(buf, 7)?;
                pos += used;
                self.lookup(index)?
            } else if byte & 0xe0 == 0x20 {
                // Dynamic table size update (6.3): only before any field.
                let (size, used) = decode_int(buf, 5)?;
                if fields_seen || size > self.max_allowed {
                    return Err(HpackError::BadSizeUpdate(size));
                }
                self.table.set_max_size(size);
                pos += used;
                continue;
            } else {
                // Literal (6.2): with incremental indexing (01), without (0000), never (0001).
                let (prefix, index_it, sensitive) = if byte & 0xc0 == 0x40 {
                    (6, true, false)
                } else {
                    (4, false, byte & 0x10 != 0)
                };
                let (name_index, used) = decode_int(buf, prefix)?;
                let mut at = used;
                let name = if name_index == 0 {
                    let (name, used) = decode_string(&buf[at..])?;
                    at += used;
                    name
                } else {
                    self.lookup(name_index)?.name
                };
                let (value, used) = decode_string(&buf[at..])?;
                at += used;
                pos += at;
                let field = Field {
                    name,
                    value,
                    sensitive,
                };
                if index_it {
                    self.table.insert(field.clone());
                }
                field
            };
            fields_seen = true;
            list_size = list_size.saturating_add(field.size());
            if list_size > max_header_list_size {
                too_large = true;
                fields.clear();
            }
            if !too_large {
                fields.push(field);
            }
        }
        if too_large {
            return Err(HpackError::HeaderListTooLarge {
                limit: max_header_list_size,
            });
        }
        Ok(fields)
    }

    fn lookup(&self, index: usize) -> Result<Field, HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Field::new(
                Bytes::from_static(name.as_bytes()),
                Bytes::from_static(value.as_bytes()),
            ));
        }
        self.table
            .get(index - STATIC_TABLE.len() - 1)
            .cloned()
            .ok_or(HpackError::BadIndex(index))
    }
}

/// Headers the encoder never puts in the dynamic table (credentials).
fn never_index(name: &[u8]) -> bool {
    matches!(
        name,
        b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie"
    )
}

/// The sending side's HPACK state.
pub struct Encoder {
    table: DynamicTable,
    /// A size update to announce at the start of the next block.
    pending_update: Option<usize>,
}

impl Encoder {
    /// An encoder using a dynamic table of up to `max_table_size` bytes (the peer's
    /// SETTINGS_HEADER_TABLE_SIZE, 4096 until it says otherwise).
    pub fn new(max_table_size: usize) -> Self {
        Self {
            table: DynamicTable::new(max_table_size),
            pending_update: None,
        }
    }

    /// The peer changed SETTINGS_HEADER_TABLE_SIZE: use at most `size` (capped at 4096 to bound
    /// our own memory) and announce it in the next block.
    pub fn set_max_table_size(&mut self, size: usize) {
        let size = size.min(4096);
        if size != self.table.max_size() {
            self.table.set_max_size(size);
            self.pending_update = Some(size);
        }
    }

    /// Appends the encoding of `fields` as one header block to `out`.
    pub fn encode<'a>(&mut self, fields: impl IntoIterator<Item = &'a Field>, out: &mut Vec<u8>) {
        if let Some(size) = self.pending_update.take() {
            encode_int(size, 5, 0x20, out);
        }
        for field in fields {
            self.encode_field(field, out);
        }
    }

    fn encode_field(&mut self, field: &Field, out: &mut Vec<u8>) {
        let mut name_index = None;
        for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
            if name.as_bytes() == field.name {
                if value.as_bytes() == field.value {
                    encode_int(i + 1, 7, 0x80, out);
                    return;
                }
                name_index.get_or_insert(i + 1);
            }
        }
        let sensitive = field.sensitive || never_index(&field.name);
        if !sensitive {
            if let Some((i, exact)) = self.table.find(&field.name, &field.value) {
                let index = STATIC_TABLE.len() + 1 + i;
                if exact {
                    encode_int(index, 7, 0x80, out);
                    return;
                }
                name_index.get_or_insert(index);
            }
        }
        let (prefix, flags) = if sensitive {
            (4, 0x10)
        } else if field.size() <= self.table.max_size() / 2 {
            (6, 0x40)
        } else {
            (4, 0x00)
        };
        encode_int(name_index.unwrap_or(0), prefix, flags, out);
        if name_index.is_none() {
            encode_string(&field.name, out);
        }
        encode_string(&field.value, out);
        if flags == 0x40 {
            self.table.insert(field.clone());
        }
    }
}

#[cfg(test)]
mod tests;
