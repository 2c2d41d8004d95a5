//! Header block rules of RFC 9113 sections 8.2 and 8.3: a block that breaks them makes the
//! request or response malformed, which is a stream error of type PROTOCOL_ERROR.

use super::hpack::Field;

/// Which kind of header block is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// First block of a request (server side).
    Request,
    /// First block of a response (client side).
    Response,
    /// Trailers (no pseudo-headers at all).
    Trailers,
}

/// Why a block is malformed.
pub type Malformed = &'static str;

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b > 0x20 && b < 0x7f && !b.is_ascii_uppercase() && b != b':')
}

fn valid_value(value: &[u8]) -> bool {
    // No NUL, CR or LF anywhere; no leading or trailing space or tab.
    !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
        && !value.first().is_some_and(|&b| b == b' ' || b == b'\t')
        && !value.last().is_some_and(|&b| b == b' ' || b == b'\t')
}

/// Checks a decoded header block.
pub fn check(kind: BlockKind, fields: &[Field]) -> Result<(), Malformed> {
    let mut regular_seen = false;
    let (mut method, mut scheme, mut path, mut authority, mut status) = (0, 0, 0, 0, 0);
    let mut is_connect = false;
    for field in fields {
        let name = &field.name[..];
        if !valid_value(&field.value) {
            return Err("header value contains a forbidden character");
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err("pseudo-header after a regular header");
            }
            match (kind, pseudo) {
                (BlockKind::Request, b"method") => {
                    method += 1;
                    is_connect = &field.value[..] == b"CONNECT";
                }
                (BlockKind::Request, b"scheme") => scheme += 1,
                (BlockKind::Request, b"path") => {
                    path += 1;
                    if field.value.is_empty() {
                        return Err("empty :path");
                    }
                }
                (BlockKind::Request, b"authority") => authority += 1,
                (BlockKind::Response, b"status") => status += 1,
                _ => return Err("pseudo-header not allowed here"),
            }
            continue;
        }
        regular_seen = true;
        if !valid_name(name) {
            return Err("invalid header name (uppercase, empty, or forbidden character)");
        }
        if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) {
            return Err("connection-specific header field");
        }
        if name == b"te" && &field.value[..] != b"trailers" {
            return Err("te header other than \"trailers\"");
        }
    }
    match kind {
        BlockKind::Request => {
            if method != 1 || authority > 1 {
                return Err("request needs exactly one :method and at most one :authority");
            }
            if is_connect {
                if scheme != 0 || path != 0 || authority != 1 {
                    return Err("malformed CONNECT request");
                }
            } else if scheme != 1 || path != 1 {
                return Err("request needs exactly one :scheme and one :path");
            }
        }
        BlockKind::Response => {
            if status != 1 {
                return Err("response needs exactly one :status");
            }
        }
        BlockKind::Trailers => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str, v: &str) -> Field {
        Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn request(extra: &[(&str, &str)]) -> Vec<Field> {
        let mut fields = vec![
            f(":method", "POST"),
            f(":scheme", "http"),
            f(":path", "/a"),
            f(":authority", "x"),
        ];
        fields.extend(extra.iter().map(|(n, v)| f(n, v)));
        fields
    }

    #[test]
    fn well_formed_blocks_pass() {
        assert_eq!(
            check(
                BlockKind::Request,
                &request(&[("te", "trailers"), ("x-a", "b")])
            ),
            Ok(())
        );
        assert_eq!(
            check(
                BlockKind::Response,
                &[f(":status", "200"), f("content-type", "x")]
            ),
            Ok(())
        );
        assert_eq!(check(BlockKind::Trailers, &[f("grpc-status", "0")]), Ok(()));
        assert_eq!(
            check(
                BlockKind::Request,
                &[f(":method", "CONNECT"), f(":authority", "h:1")]
            ),
            Ok(())
        );
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        let cases: Vec<(BlockKind, Vec<Field>)> = vec![
            (BlockKind::Request, request(&[("X-Upper", "a")])),
            (BlockKind::Request, request(&[("connection", "keep-alive")])),
            (BlockKind::Request, request(&[("te", "gzip")])),
            (BlockKind::Request, request(&[("x-bad", "a\r\nb")])),
            (BlockKind::Request, request(&[("x-space", " a")])),
            (
                BlockKind::Request,
                vec![f(":method", "GET"), f(":path", "/")],
            ),
            (
                BlockKind::Request,
                vec![f(":method", "GET"), f(":scheme", "http"), f(":path", "")],
            ),
            (
                BlockKind::Request,
                vec![
                    f(":method", "GET"),
                    f(":method", "GET"),
                    f(":scheme", "http"),
                    f(":path", "/"),
                ],
            ),
            (
                BlockKind::Request,
                vec![
                    f("x-a", "b"),
                    f(":method", "GET"),
                    f(":scheme", "http"),
                    f(":path", "/"),
                ],
            ),
            (BlockKind::Request, request(&[(":status", "200")])),
            (
                BlockKind::Request,
                vec![
                    f(":method", "GET"),
                    f(":scheme", "http"),
                    f(":path", "/"),
                    f(":protocol", "x"),
                ],
            ),
            (BlockKind::Response, vec![f("content-type", "x")]),
            (BlockKind::Trailers, vec![f(":status", "200")]),
        ];
        for (kind, fields) in cases {
            assert!(check(kind, &fields).is_err(), "{kind:?} {fields:?}");
        }
    }
}
