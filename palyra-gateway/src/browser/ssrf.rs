//! The SSRF guard: which URLs a browser session may load. Only `http` and `https` reach the
//! network (plus `about:blank` and `data:`); a host that is, or resolves to, a loopback,
//! private, link-local, carrier-grade NAT, unique-local, multicast or unspecified address is
//! refused unless the session allows private targets. Every address a name resolves to is
//! checked, so a name with one public and one private address is refused.

use crate::runtime::{self, Runtime};
use std::net::{IpAddr, Ipv4Addr};

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL's network target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Loads nothing from the network (`about:blank`, `data:`).
    Local,
    /// `host` on `port` over http(s).
    Remote {
        /// Host name or address literal (without brackets).
        host: String,
        /// Port (the scheme's default when absent).
        port: u16,
    },
}

/// Reads the network target of `url`, refusing schemes other than http, https, `about:blank`
/// and `data:`.
pub fn target(url: &str) -> Result<Target, Refused> {
    let lower = url.trim().to_ascii_lowercase();
    if lower == "about:blank" || lower.starts_with("data:") {
        return Ok(Target::Local);
    }
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|e| Refused(format!("not a valid URL: {e}")))?;
    let port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        Some(other) => {
            return Err(Refused(format!(
                "scheme {other}: is not allowed (http, https, about:blank and data: are)"
            )))
        }
        None => {
            return Err(Refused(
                "the URL needs a scheme (http:// or https://)".into(),
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Refused("the URL has no host".into()))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(Refused("the URL has no host".into()));
    }
    Ok(Target::Remote {
        host,
        port: authority.port_u16().unwrap_or(port),
    })
}

/// Why `ip` is not a public address, if it is not.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                // NAT64: the embedded IPv4 address decides.
                non_public_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && o[1] & 0xc0 == 64 {
        Some("carrier-grade NAT (shared)")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if o[0] == 198 && o[1] & 0xfe == 18 {
        Some("benchmarking")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else {
        None
    }
}

/// Checks `host` without resolving it: names of the local machine and address literals.
/// `Ok(true)` means an address literal was checked (nothing to resolve).
pub fn check_host_literal(host: &str) -> Result<bool, Refused> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Err(Refused(format!("{host} is the local machine (loopback)")));
    }
    match lower.parse::<IpAddr>() {
        Ok(ip) => match non_public(ip) {
            Some(why) => Err(Refused(format!("{host} is a {why} address"))),
            None => Ok(true),
        },
        Err(_) => Ok(false),
    }
}

/// Checks `url` for a session; resolves its host (off the event loop) unless private targets
/// are allowed.
pub async fn check_url(rt: &dyn Runtime, url: &str, allow_private: bool) -> Result<(), Refused> {
    let Target::Remote { host, port } = target(url)? else {
        return Ok(());
    };
    if allow_private {
        return Ok(());
    }
    if check_host_literal(&host)? {
        return Ok(());
    }
    let addrs = runtime::lookup_host(rt, &format!("{host}:{port}"))
        .await
        .map_err(|e| Refused(format!("cannot resolve {host}: {e}")))?;
    if addrs.is_empty() {
        return Err(Refused(format!("{host} has no address")));
    }
    for addr in addrs {
        if let Some(why) = non_public(addr.ip()) {
            return Err(Refused(format!(
                "{host} resolves to {}, a {why} address",
                addr.ip()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_ranges_are_named() {
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata lives here)"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "carrier-grade NAT (shared)"),
            ("224.0.0.1", "multicast or reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local (private)"),
            ("::ffff:127.0.0.1", "loopback"),
            (
                "::ffff:169.254.169.254",
                "link-local (cloud metadata lives here)",
            ),
            ("64:ff9b::a00:1", "private"),
        ] {
            assert_eq!(non_public(ip(addr)), Some(why), "{addr}");
        }
        for addr in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert_eq!(non_public(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn only_web_schemes_reach_the_network() {
        assert_eq!(target("about:blank"), Ok(Target::Local));
        assert_eq!(target("data:text/html,hi"), Ok(Target::Local));
        assert_eq!(
            target("https://example.com/a?b"),
            Ok(Target::Remote {
                host: "example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            target("http://[::1]:8080/"),
            Ok(Target::Remote {
                host: "::1".into(),
                port: 8080
            })
        );
        for bad in [
            "file:///etc/passwd",
            "chrome://settings",
            "javascript:alert(1)",
            "ftp://x/",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
        assert!(target("example.com/path").is_err());
    }

    #[test]
    fn local_names_and_literals_are_refused_without_dns() {
        assert!(check_host_literal("localhost").is_err());
        assert!(check_host_literal("app.localhost.").is_err());
        assert!(check_host_literal("127.0.0.2").is_err());
        assert!(check_host_literal("::1").is_err());
        assert_eq!(check_host_literal("8.8.8.8"), Ok(true));
        assert_eq!(check_host_literal("example.com"), Ok(false));
    }
}
