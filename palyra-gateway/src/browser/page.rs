//! What browserd reads from and does to a page beyond clicking: key presses, screenshots, the
//! DOM summary and visible text of Observe, the accessibility tree, PDFs, cookies and storage.

use super::tab::{truncate, Tab};
use base64::Engine as _;
use serde_json::{json, Value};

/// Resolves a selector (`A >>> B` crosses into same-origin iframes) to one element, or null.
pub const RESOLVE: &str = r#"((selector) => {
  let doc = document;
  const parts = selector.split('>>>').map(s => s.trim());
  for (let i = 0; i < parts.length - 1; i++) {
    const frame = doc.querySelector(parts[i]);
    if (!frame || !frame.contentDocument) return null;
    doc = frame.contentDocument;
  }
  return doc.querySelector(parts[parts.length - 1]);
})"#;

/// The DOM summary Observe returns: one line per meaningful element, indented by depth.
const DOM_SUMMARY: &str = r#"((max) => {
  const out = []; let size = 0; let truncated = false;
  const text = (el) => (el.innerText || el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 80);
  const attrs = (el) => {
    let s = '';
    if (el.id) s += '#' + el.id;
    for (const a of ['name', 'type', 'href', 'src', 'role', 'aria-label', 'placeholder']) {
      const v = el.getAttribute(a); if (v) s += '[' + a + '=' + JSON.stringify(v.slice(0, 80)) + ']';
    }
    if ('value' in el && el.tagName !== 'BUTTON' && el.tagName !== 'OPTION' && el.value !== undefined && el.value !== '')
      s += '[value=' + JSON.stringify(String(el.value).slice(0, 80)) + ']';
    if (el.disabled) s += '[disabled]';
    if (el.checked) s += '[checked]';
    return s;
  };
  const keep = new Set(['A','BUTTON','INPUT','TEXTAREA','SELECT','OPTION','FORM','LABEL','H1','H2','H3','H4','H5','H6','IMG','IFRAME','TABLE','TR','TD','TH','LI','P','NAV','MAIN','HEADER','FOOTER','SECTION','ARTICLE','DIALOG','SUMMARY']);
  const walk = (el, depth) => {
    if (truncated) return;
    const style = el.ownerDocument.defaultView.getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') return;
    let next = depth;
    if (keep.has(el.tagName) || el.getAttribute('role')) {
      let line = '  '.repeat(depth) + el.tagName.toLowerCase() + attrs(el);
      const leaf = ['A','BUTTON','LABEL','H1','H2','H3','H4','H5','H6','OPTION','TD','TH','LI','P','SUMMARY'].includes(el.tagName);
      if (leaf) { const t = text(el); if (t) line += ' ' + JSON.stringify(t); }
      if (size + line.length + 1 > max) { truncated = true; return; }
      out.push(line); size += line.length + 1; next = depth + 1;
    }
    for (const child of el.children) walk(child, next);
    if (el.tagName === 'IFRAME') {
      try { if (el.contentDocument && el.contentDocument.body) walk(el.contentDocument.body, next); } catch (e) {}
    }
  };
  if (document.body) walk(document.body, 0);
  return {dom: out.join('\n'), truncated};
})"#;

/// Key definitions for `Input.dispatchKeyEvent`: (key, code, keyCode, text).
fn key_definition(key: &str) -> Option<(String, String, i64, String)> {
    let named = |code: &str, key_code: i64, text: &str| {
        Some((key.to_owned(), code.to_owned(), key_code, text.to_owned()))
    };
    match key {
        "Enter" => named("Enter", 13, "\r"),
        "Tab" => named("Tab", 9, ""),
        "Escape" => named("Escape", 27, ""),
        "Backspace" => named("Backspace", 8, ""),
        "Delete" => named("Delete", 46, ""),
        "ArrowUp" => named("ArrowUp", 38, ""),
        "ArrowDown" => named("ArrowDown", 40, ""),
        "ArrowLeft" => named("ArrowLeft", 37, ""),
        "ArrowRight" => named("ArrowRight", 39, ""),
        "Home" => named("Home", 36, ""),
        "End" => named("End", 35, ""),
        "PageUp" => named("PageUp", 33, ""),
        "PageDown" => named("PageDown", 34, ""),
        "Space" | " " => Some((" ".into(), "Space".into(), 32, " ".into())),
        _ => {
            let mut chars = key.chars();
            let c = chars.next()?;
            if chars.next().is_some() || c.is_control() {
                return None;
            }
            let (code, key_code) = if c.is_ascii_alphabetic() {
                (
                    format!("Key{}", c.to_ascii_uppercase()),
                    c.to_ascii_uppercase() as i64,
                )
            } else if c.is_ascii_digit() {
                (format!("Digit{c}"), c as i64)
            } else {
                (String::new(), 0)
            };
            Some((c.to_string(), code, key_code, c.to_string()))
        }
    }
}

/// Presses `combo` (`Enter`, `a`, `Control+a`, `Shift+Tab`, ...) in the focused element.
pub async fn press(tab: &Tab, combo: &str) -> Result<(), String> {
    let mut parts: Vec<&str> = combo.split('+').collect();
    // `+` itself is a key.
    let key = if combo.ends_with("++") || combo == "+" {
        parts.retain(|p| !p.is_empty());
        "+"
    } else {
        parts.pop().unwrap_or_default()
    };
    let mut modifiers = 0;
    for m in &parts {
        modifiers |= match *m {
            "Alt" => 1,
            "Control" | "Ctrl" => 2,
            "Meta" | "Command" => 4,
            "Shift" => 8,
            other => {
                return Err(format!(
                    "unknown modifier {other:?} in {combo:?} (Alt, Control, Meta, Shift)"
                ))
            }
        };
    }
    let Some((key, code, key_code, text)) = key_definition(key) else {
        return Err(format!(
            "unknown key {key:?}: use one character or Enter, Tab, Escape, Backspace, Delete, \
             ArrowUp/Down/Left/Right, Home, End, PageUp, PageDown, Space"
        ));
    };
    // A modified printable key (Control+a) types nothing.
    let text = if modifiers & 0b0110 != 0 {
        String::new()
    } else {
        text
    };
    let down = if text.is_empty() {
        "rawKeyDown"
    } else {
        "keyDown"
    };
    let mut params = json!({"type": down, "key": key, "code": code, "modifiers": modifiers,
                            "windowsVirtualKeyCode": key_code});
    if !text.is_empty() {
        params["text"] = json!(text);
    }
    tab.call("Input.dispatchKeyEvent", params)
        .await
        .map_err(|e| e.to_string())?;
    tab.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyUp", "key": key, "code": code, "modifiers": modifiers,
               "windowsVirtualKeyCode": key_code}),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Screenshot formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
}

/// Parses `ScreenshotRequest.format`: empty or `png`, `jpeg` (or `jpg`), optionally followed by
/// `:full` for the whole page rather than the viewport.
pub fn parse_format(format: &str) -> Result<(Format, bool), String> {
    let lower = format.trim().to_ascii_lowercase();
    let (name, full) = match lower.strip_suffix(":full") {
        Some(name) => (name, true),
        None => (lower.as_str(), false),
    };
    let format = match name {
        "" | "png" => Format::Png,
        "jpeg" | "jpg" => Format::Jpeg,
        other => {
            return Err(format!(
                "screenshot format {other:?} is not png or jpeg (add :full for the whole page)"
            ))
        }
    };
    Ok((format, full))
}

/// Takes a screenshot within `max_bytes`. PNG over the cap fails (with the size); JPEG is
/// retried at lower quality before failing.
pub async fn screenshot(
    tab: &Tab,
    format: Format,
    full_page: bool,
    max_bytes: u64,
) -> Result<(Vec<u8>, &'static str), String> {
    let qualities: &[u32] = match format {
        Format::Png => &[0],
        Format::Jpeg => &[80, 60, 40, 20],
    };
    let mut last = 0usize;
    for &quality in qualities {
        let mut params = json!({"format": if format == Format::Png { "png" } else { "jpeg" },
                                "fromSurface": true});
        if quality > 0 {
            params["quality"] = json!(quality);
        }
        if full_page {
            let metrics = tab
                .call("Page.getLayoutMetrics", Value::Null)
                .await
                .map_err(|e| e.to_string())?;
            let size = &metrics["cssContentSize"];
            let (w, h) = (
                size["width"].as_f64().unwrap_or(800.0).min(16_384.0),
                size["height"].as_f64().unwrap_or(600.0).min(16_384.0),
            );
            params["clip"] = json!({"x": 0, "y": 0, "width": w, "height": h, "scale": 1});
            params["captureBeyondViewport"] = json!(true);
        }
        let shot = tab
            .call("Page.captureScreenshot", params)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("Chromium sent a screenshot that is not base64: {e}"))?;
        if bytes.len() as u64 <= max_bytes {
            let mime = if format == Format::Png {
                "image/png"
            } else {
                "image/jpeg"
            };
            return Ok((bytes, mime));
        }
        last = bytes.len();
    }
    Err(format!(
        "screenshot_too_large: the screenshot is {last} bytes, over the cap of {max_bytes}; ask \
         for jpeg or a larger max_bytes"
    ))
}

/// A failure screenshot within `max_bytes`: PNG if it fits, else JPEG; `None` if nothing fits.
pub async fn failure_screenshot(tab: &Tab, max_bytes: u64) -> Option<(Vec<u8>, String)> {
    for format in [Format::Png, Format::Jpeg] {
        if let Ok((bytes, mime)) = screenshot(tab, format, false, max_bytes).await {
            return Some((bytes, mime.to_owned()));
        }
    }
    None
}

/// Cuts `s` to `max` bytes; says whether it did.
pub fn cut(s: String, max: u64) -> (String, bool) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if s.len() <= max {
        (s, false)
    } else {
        (truncate(s, max), true)
    }
}

/// The page's DOM summary within `max` bytes.
pub async fn dom_summary(tab: &Tab, max: u64) -> Result<(String, bool), String> {
    let v = tab.evaluate(&format!("{DOM_SUMMARY}({max})")).await?;
    let dom = v["dom"].as_str().unwrap_or_default().to_owned();
    let (dom, cut_here) = cut(dom, max);
    Ok((dom, cut_here || v["truncated"].as_bool().unwrap_or(false)))
}

/// The page's visible text within `max` bytes.
pub async fn visible_text(tab: &Tab, max: u64) -> Result<(String, bool), String> {
    let v = tab
        .evaluate("document.body ? document.body.innerText : ''")
        .await?;
    Ok(cut(v.as_str().unwrap_or_default().to_owned(), max))
}

/// The accessibility tree, one `role "name"` line per node indented by depth, within `max`.
pub async fn accessibility_tree(tab: &Tab, max: u64) -> Result<(String, bool), String> {
    let tree = tab
        .call("Accessibility.getFullAXTree", json!({"depth": 64}))
        .await
        .map_err(|e| e.to_string())?;
    let nodes = tree["nodes"].as_array().cloned().unwrap_or_default();
    let by_id: std::collections::HashMap<&str, &Value> = nodes
        .iter()
        .filter_map(|n| n["nodeId"].as_str().map(|id| (id, n)))
        .collect();
    let mut out = String::new();
    let mut truncated = false;
    let mut stack: Vec<(&Value, usize)> = nodes
        .iter()
        .filter(|n| n.get("parentId").is_none())
        .map(|n| (n, 0))
        .collect();
    while let Some((node, depth)) = stack.pop() {
        let ignored = node["ignored"].as_bool().unwrap_or(false);
        let role = node["role"]["value"].as_str().unwrap_or("");
        let next = if ignored || role.is_empty() || role == "none" || role == "generic" {
            depth
        } else {
            let name = node["name"]["value"].as_str().unwrap_or("");
            let line = if name.is_empty() {
                format!("{}{role}\n", "  ".repeat(depth))
            } else {
                format!("{}{role} {}\n", "  ".repeat(depth), Value::from(name))
            };
            if (out.len() + line.len()) as u64 > max {
                truncated = true;
                break;
            }
            out.push_str(&line);
            depth + 1
        };
        if let Some(children) = node["childIds"].as_array() {
            for child in children.iter().rev() {
                if let Some(c) = child.as_str().and_then(|id| by_id.get(id)) {
                    stack.push((c, next));
                }
            }
        }
    }
    Ok((out.trim_end().to_owned(), truncated))
}

/// The page as PDF.
pub async fn pdf(tab: &Tab) -> Result<Vec<u8>, String> {
    let printed = tab
        .call("Page.printToPDF", json!({"printBackground": true}))
        .await
        .map_err(|e| e.to_string())?;
    base64::engine::general_purpose::STANDARD
        .decode(printed["data"].as_str().unwrap_or_default())
        .map_err(|e| format!("Chromium sent a PDF that is not base64: {e}"))
}

/// Local and session storage of the tab's origin: `(origin, [(key, value)])`.
pub async fn storage(tab: &Tab) -> Result<(String, Vec<(String, String)>), String> {
    let v = tab
        .evaluate(
            "(() => { const out = []; try { for (const s of [localStorage, sessionStorage]) \
             for (let i = 0; i < s.length; i++) { const k = s.key(i); out.push([k, s.getItem(k)]); } } \
             catch (e) {} return {origin: location.origin, entries: out}; })()",
        )
        .await?;
    let entries = v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        kv[0].as_str().unwrap_or_default().to_owned(),
                        kv[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((v["origin"].as_str().unwrap_or_default().to_owned(), entries))
}

/// Clears the tab origin's local and session storage; returns how many entries went.
pub async fn clear_storage(tab: &Tab) -> Result<u32, String> {
    let v = tab
        .evaluate(
            "(() => { let n = 0; try { for (const s of [localStorage, sessionStorage]) \
             { n += s.length; s.clear(); } } catch (e) {} return n; })()",
        )
        .await?;
    Ok(v.as_u64().unwrap_or(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screenshot_formats() {
        assert_eq!(parse_format("").unwrap(), (Format::Png, false));
        assert_eq!(parse_format("PNG").unwrap(), (Format::Png, false));
        assert_eq!(parse_format("jpg:full").unwrap(), (Format::Jpeg, true));
        assert!(parse_format("gif").unwrap_err().contains("gif"));
    }

    #[test]
    fn keys() {
        assert_eq!(key_definition("Enter").unwrap().2, 13);
        assert_eq!(key_definition("a").unwrap().1, "KeyA");
        assert_eq!(key_definition("7").unwrap().1, "Digit7");
        assert!(key_definition("Hyper").is_none());
    }

    #[test]
    fn cut_says_when_it_cut() {
        assert_eq!(cut("héllo".into(), 2), ("h".into(), true));
        assert_eq!(cut("abc".into(), 3), ("abc".into(), false));
    }
}
