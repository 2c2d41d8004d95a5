//! Browser tools for runs, served by a `palyra-browserd` the daemon connects to (`[browser]`):
//! a run's first browser call opens a browser session of its own, later calls drive it, and it
//! closes when the run ends. They go through the same approval policy as every other tool.
//!
//! The engine only knows this trait; the daemon hands it the client that speaks to browserd.

use super::machine::ToolSpec;
use crate::node::hub::CapabilityResult;
use crate::runtime::BoxFuture;
use serde_json::{json, Value};

/// Loads a URL in the run's browser tab.
pub const NAVIGATE: &str = "palyra_browser_navigate";
/// Clicks an element.
pub const CLICK: &str = "palyra_browser_click";
/// Types into a field.
pub const TYPE: &str = "palyra_browser_type";
/// Reads the page: a DOM summary and its visible text.
pub const OBSERVE: &str = "palyra_browser_observe";
/// Takes a screenshot (kept by the gateway, shown in the console).
pub const SCREENSHOT: &str = "palyra_browser_screenshot";

/// The browser tool names.
pub const NAMES: [&str; 5] = [NAVIGATE, CLICK, TYPE, OBSERVE, SCREENSHOT];

/// What runs' browser tools call.
pub trait BrowserTools: Send + Sync {
    /// Runs browser tool `tool` for run `run_id` with `input`.
    fn call(&self, run_id: &str, tool: &str, input: Value) -> BoxFuture<CapabilityResult>;
    /// The run ended: its browser session can go.
    fn release(&self, run_id: &str);
    /// A screenshot the run took (PNG), by the name its tool result gave.
    fn screenshot(&self, run_id: &str, name: &str) -> Option<Vec<u8>>;
}

/// Whether `name` can be a screenshot's name (`<n>.png`): nothing that could leave its folder.
pub fn valid_screenshot_name(name: &str) -> bool {
    name.strip_suffix(".png")
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The browser tools' descriptions for the model (approval flags are the policy's).
pub fn specs() -> Vec<ToolSpec> {
    let selector = json!({"type": "string", "description": "CSS selector of exactly one element; 'frame >>> inner' reaches into a same-origin iframe"});
    let spec = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters,
        approval_required: true,
        sensitive: false,
    };
    vec![
        spec(
            NAVIGATE,
            "Open a web page in the run's browser tab. Returns the final URL, HTTP status and title.",
            json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}),
        ),
        spec(
            CLICK,
            "Click an element of the page once it is visible, stable, enabled and not covered.",
            json!({"type": "object", "required": ["selector"], "properties": {"selector": selector}}),
        ),
        spec(
            TYPE,
            "Type text into an input, textarea or editable element.",
            json!({"type": "object", "required": ["selector", "text"], "properties": {
                "selector": selector, "text": {"type": "string"},
                "clear": {"type": "boolean", "description": "clear the field first"}}}),
        ),
        spec(
            OBSERVE,
            "Read the page: its URL, a summary of its elements and its visible text.",
            json!({"type": "object", "properties": {}}),
        ),
        spec(
            SCREENSHOT,
            "Take a screenshot of the page; the operator sees it in the console.",
            json!({"type": "object", "properties": {"full_page": {"type": "boolean"}}}),
        ),
    ]
}
