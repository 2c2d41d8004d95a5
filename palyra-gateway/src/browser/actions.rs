//! Page actions that wait the way Playwright's auto-waiting does: before acting, the selector
//! must resolve to exactly one element that is attached, visible, stable (the same box over two
//! animation frames), enabled (and editable, for typing) and that receives pointer events at its
//! centre (no other element covers it). Each check is retried until the action's deadline;
//! a failure says which check did not pass (`selector_not_found`, `element_covered`, ...).
//!
//! Selectors are CSS; `A >>> B` looks for `B` inside the document of the same-origin iframe `A`.

use super::tab::Tab;
use crate::runtime::Rt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What an action needs of its element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Click: visible, stable, enabled, receives events.
    Click,
    /// Type: as click, and editable (input, textarea, contenteditable).
    Type,
    /// Select: a visible, enabled `<select>`.
    Select,
    /// Highlight, scroll into view: visible.
    Visible,
    /// WaitFor: attached (present in the DOM) and visible.
    Present,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::Type => "type",
            Self::Select => "select",
            Self::Visible => "visible",
            Self::Present => "present",
        }
    }
}

/// Why an element was not actionable (the action log's outcome word and a readable error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotActionable {
    /// `selector_not_found`, `selector_ambiguous`, `element_hidden`, `element_unstable`,
    /// `element_disabled`, `element_not_editable`, `element_covered`, `invalid_selector`,
    /// `page_error`, `timeout`.
    pub outcome: String,
    /// What a person reads.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Where to act: the element's centre in viewport CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
}

/// The check, run in the page. Returns `{state, ...}`; `ready` comes with the click point.
const CHECK: &str = r#"
(async (selector, need) => {
  const describe = (el) => {
    if (!el) return 'nothing';
    let s = '<' + el.tagName.toLowerCase();
    if (el.id) s += ' id="' + el.id + '"';
    if (el.className && typeof el.className === 'string') s += ' class="' + el.className.trim().slice(0, 60) + '"';
    return s + '>';
  };
  let doc = document, offX = 0, offY = 0;
  const parts = selector.split('>>>').map(s => s.trim());
  for (let i = 0; i < parts.length - 1; i++) {
    let frames;
    try { frames = doc.querySelectorAll(parts[i]); } catch (e) { return {state: 'invalid_selector', detail: String(e.message)}; }
    if (frames.length !== 1 || frames[0].tagName !== 'IFRAME') return {state: 'not_found', detail: 'frame ' + parts[i]};
    let inner;
    try { inner = frames[0].contentDocument; } catch (e) { inner = null; }
    if (!inner) return {state: 'not_found', detail: 'frame ' + parts[i] + ' is not same-origin or not loaded'};
    const r = frames[0].getBoundingClientRect();
    offX += r.left + frames[0].clientLeft; offY += r.top + frames[0].clientTop;
    doc = inner;
  }
  const last = parts[parts.length - 1];
  let found;
  try { found = doc.querySelectorAll(last); } catch (e) { return {state: 'invalid_selector', detail: String(e.message)}; }
  if (found.length === 0) return {state: 'not_found'};
  if (found.length > 1) return {state: 'ambiguous', count: found.length};
  const el = found[0];
  const view = doc.defaultView;
  const style = view.getComputedStyle(el);
  const box = () => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
  const visible = () => {
    const b = box();
    return style.visibility === 'visible' && style.display !== 'none' && b[2] > 0 && b[3] > 0;
  };
  if (need === 'present') return visible() ? {state: 'ready'} : {state: 'hidden'};
  if (!visible()) return {state: 'hidden'};
  el.scrollIntoView({block: 'center', inline: 'center', behavior: 'instant'});
  const before = box();
  await new Promise(r => view.requestAnimationFrame(() => view.requestAnimationFrame(r)));
  const after = box();
  if (before.some((v, i) => Math.abs(v - after[i]) > 0.5)) return {state: 'unstable'};
  if (need === 'visible') return {state: 'ready', x: offX + after[0] + after[2] / 2, y: offY + after[1] + after[3] / 2};
  const disabled = el.disabled === true || el.getAttribute('aria-disabled') === 'true'
    || !!(el.closest && el.closest('fieldset[disabled]'));
  if (disabled) return {state: 'disabled'};
  if (need === 'select' && el.tagName !== 'SELECT') return {state: 'not_select', detail: describe(el)};
  if (need === 'type') {
    const tag = el.tagName;
    const editable = el.isContentEditable || tag === 'TEXTAREA'
      || (tag === 'INPUT' && !['button', 'checkbox', 'radio', 'submit', 'reset', 'file', 'image', 'range', 'color', 'hidden'].includes((el.type || '').toLowerCase()));
    if (!editable || el.readOnly) return {state: 'not_editable', detail: describe(el)};
  }
  const x = after[0] + after[2] / 2, y = after[1] + after[3] / 2;
  const hit = doc.elementFromPoint(x, y);
  if (!hit || !(hit === el || el.contains(hit))) return {state: 'covered', detail: describe(hit)};
  return {state: 'ready', x: offX + x, y: offY + y};
})
"#;

/// Waits between attempts (Playwright's back-off), then every 500 ms.
const BACKOFF_MS: [u64; 5] = [0, 20, 100, 100, 500];

/// Waits until `selector` is actionable for `need`, or `deadline` passes. `retries` caps the
/// attempts (0: until the deadline).
pub async fn wait_actionable(
    rt: &Rt,
    tab: &Tab,
    selector: &str,
    need: Need,
    deadline: Instant,
    retries: u32,
) -> Result<Point, NotActionable> {
    let expression = format!(
        "{CHECK}({}, {})",
        Value::from(selector),
        Value::from(need.name())
    );
    let mut attempts = 0u32;
    let mut last: Option<NotActionable> = None;
    loop {
        let wait = BACKOFF_MS.get(attempts as usize).copied().unwrap_or(500);
        if wait > 0 {
            let at = (rt.now() + Duration::from_millis(wait)).min(deadline);
            crate::runtime::sleep_until(&**rt, at).await;
        }
        if rt.now() >= deadline && attempts > 0 {
            break;
        }
        attempts += 1;
        let answer = tab.evaluate(&expression).await;
        let state = match &answer {
            Ok(v) => v
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("page_error"),
            Err(_) => "page_error",
        };
        if state == "ready" {
            let v = answer.unwrap_or_default();
            return Ok(Point {
                x: v.get("x").and_then(Value::as_f64).unwrap_or(0.0),
                y: v.get("y").and_then(Value::as_f64).unwrap_or(0.0),
            });
        }
        let detail = answer
            .as_ref()
            .ok()
            .and_then(|v| v.get("detail"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let failure = explain(state, selector, &detail, &answer);
        // A selector that does not parse never will.
        if failure.outcome == "invalid_selector" {
            return Err(NotActionable {
                attempts,
                ..failure
            });
        }
        last = Some(failure);
        if retries > 0 && attempts > retries {
            break;
        }
        if rt.now() >= deadline {
            break;
        }
    }
    let mut failure = last.unwrap_or(NotActionable {
        outcome: "timeout".into(),
        error: format!("{selector}: timed out before the first check"),
        attempts: 0,
    });
    failure.attempts = attempts;
    Err(failure)
}

fn explain(
    state: &str,
    selector: &str,
    detail: &str,
    answer: &Result<Value, String>,
) -> NotActionable {
    let (outcome, error) = match state {
        "not_found" if !detail.is_empty() => (
            "selector_not_found",
            format!("{selector}: {detail} not found"),
        ),
        "not_found" => (
            "selector_not_found",
            format!("{selector}: no element matches"),
        ),
        "ambiguous" => {
            let count = answer
                .as_ref()
                .ok()
                .and_then(|v| v.get("count"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            (
                "selector_ambiguous",
                format!("{selector}: {count} elements match; the selector must match exactly one"),
            )
        }
        "hidden" => ("element_hidden", format!("{selector}: the element is not visible")),
        "unstable" => (
            "element_unstable",
            format!("{selector}: the element is still moving"),
        ),
        "disabled" => ("element_disabled", format!("{selector}: the element is disabled")),
        "not_editable" => (
            "element_not_editable",
            format!("{selector}: {detail} is not an editable field"),
        ),
        "not_select" => (
            "element_not_select",
            format!("{selector}: {detail} is not a <select>"),
        ),
        "covered" => (
            "element_covered",
            format!("{selector}: the element is covered by {detail} at its centre, which would receive the click"),
        ),
        "invalid_selector" => (
            "invalid_selector",
            format!("{selector}: not a valid CSS selector ({detail})"),
        ),
        _ => (
            "page_error",
            format!(
                "{selector}: the page could not be inspected ({})",
                answer.as_ref().err().cloned().unwrap_or_default()
            ),
        ),
    };
    NotActionable {
        outcome: outcome.into(),
        error,
        attempts: 0,
    }
}

/// A left click at `point` (move, press, release), as a user's mouse would.
pub async fn click_at(tab: &Tab, point: Point) -> Result<(), String> {
    for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
        let mut params = json!({"type": kind, "x": point.x, "y": point.y, "buttons": buttons});
        if kind != "mouseMoved" {
            params["button"] = json!("left");
            params["clickCount"] = json!(1);
        }
        tab.call("Input.dispatchMouseEvent", params)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
