//! The web console's files, embedded in the binary and served with their content type and a
//! strong `ETag` (SHA-256 of the content), revalidated on every load (`Cache-Control: no-cache`).

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// URL path.
    pub path: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Content.
    pub body: &'static [u8],
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Self {
            path,
            content_type,
            body,
            etag: OnceLock::new(),
        }
    }

    /// The quoted strong entity tag.
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body);
            format!("\"{}\"", hex::encode(&digest[..16]))
        })
    }
}

static ASSETS: [Asset; 4] = [
    Asset::new(
        "/",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    Asset::new(
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    Asset::new(
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    Asset::new(
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

/// The asset served at `path` (`/index.html` is `/`).
pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_types_and_stable_etags() {
        let index = find("/").unwrap();
        assert!(std::ptr::eq(index, find("/index.html").unwrap()));
        assert!(index.content_type.starts_with("text/html"));
        assert_eq!(index.etag(), find("/").unwrap().etag());
        assert_ne!(index.etag(), find("/app.js").unwrap().etag());
        assert!(find("/nope").is_none());
        let html = std::str::from_utf8(index.body).unwrap();
        assert!(html.contains("/app.js") && html.contains("/app.css"));
    }
}
