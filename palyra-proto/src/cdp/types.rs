//! Typed views of the CDP messages Palyra uses. Every struct reads only the fields it names,
//! takes a default for a missing one and ignores every field it does not know, so a newer
//! Chromium's additions never break decoding.

use super::CdpError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Reads a `result` or `params` value as `T`.
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, CdpError> {
    T::deserialize(value).map_err(|e| CdpError::Malformed(e.to_string()))
}

/// `Target.TargetInfo`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetInfo {
    /// Target id.
    pub target_id: String,
    /// `page`, `iframe`, `worker`, `browser`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Title.
    pub title: String,
    /// URL.
    pub url: String,
    /// Whether a client is attached.
    pub attached: bool,
    /// The target that opened it (`window.open`).
    pub opener_id: Option<String>,
    /// Its browser context.
    pub browser_context_id: Option<String>,
}

/// `Target.attachedToTarget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct AttachedToTarget {
    /// The new flattened session.
    pub session_id: String,
    /// The target.
    pub target_info: TargetInfo,
    /// Paused until `Runtime.runIfWaitingForDebugger`.
    pub waiting_for_debugger: bool,
}

/// `Target.detachedFromTarget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DetachedFromTarget {
    /// The session that ended.
    pub session_id: String,
    /// Its target.
    pub target_id: Option<String>,
}

/// `Target.targetCreated`, `Target.targetInfoChanged`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetEvent {
    /// The target.
    pub target_info: TargetInfo,
}

/// `Target.targetDestroyed`, `Target.targetCrashed`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetGone {
    /// The target.
    pub target_id: String,
}

/// Result of `Target.createTarget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CreateTarget {
    /// The new target.
    pub target_id: String,
}

/// Result of `Target.attachToTarget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct AttachToTarget {
    /// The flattened session.
    pub session_id: String,
}

/// Result of `Target.createBrowserContext`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CreateBrowserContext {
    /// The new context.
    pub browser_context_id: String,
}

/// Result of `Target.getTargets`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GetTargets {
    /// Every target.
    pub target_infos: Vec<TargetInfo>,
}

/// Result of `Browser.getVersion`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct BrowserVersion {
    /// DevTools protocol version.
    pub protocol_version: String,
    /// e.g. `HeadlessChrome/131.0.6778.85`.
    pub product: String,
    /// The browser's user agent.
    pub user_agent: String,
}

/// Result of `Page.navigate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Navigate {
    /// The frame navigated.
    pub frame_id: String,
    /// The navigation's loader (absent for same-document navigations).
    pub loader_id: Option<String>,
    /// Set when the navigation failed (e.g. `net::ERR_NAME_NOT_RESOLVED`).
    pub error_text: Option<String>,
}

/// `Page.lifecycleEvent`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LifecycleEvent {
    /// The frame.
    pub frame_id: String,
    /// The loader.
    pub loader_id: String,
    /// `init`, `DOMContentLoaded`, `load`, `networkIdle`, ...
    pub name: String,
}

/// `Page.Frame`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Frame {
    /// Frame id.
    pub id: String,
    /// Parent frame (absent for the main frame).
    pub parent_id: Option<String>,
    /// Loader.
    pub loader_id: String,
    /// URL.
    pub url: String,
}

/// `Page.frameNavigated`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct FrameNavigated {
    /// The frame after navigating.
    pub frame: Frame,
}

/// `Runtime.RemoteObject`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RemoteObject {
    /// `object`, `string`, `number`, `boolean`, `undefined`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `null`, `node`, `array`, `error`, ...
    pub subtype: Option<String>,
    /// The value, for primitives and `returnByValue`.
    pub value: Value,
    /// `NaN`, `Infinity`, `-0`, bigints.
    pub unserializable_value: Option<String>,
    /// A readable description.
    pub description: Option<String>,
    /// A handle to the remote object.
    pub object_id: Option<String>,
}

/// `Runtime.ExceptionDetails`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ExceptionDetails {
    /// Short text.
    pub text: String,
    /// Line.
    pub line_number: i64,
    /// Column.
    pub column_number: i64,
    /// Script URL.
    pub url: Option<String>,
    /// The thrown value.
    pub exception: Option<RemoteObject>,
    /// Where it was thrown.
    pub stack_trace: Option<StackTrace>,
}

impl ExceptionDetails {
    /// The most useful line: the thrown error's description, else the text.
    pub fn message(&self) -> String {
        self.exception
            .as_ref()
            .and_then(|e| e.description.clone())
            .unwrap_or_else(|| self.text.clone())
    }
}

/// Result of `Runtime.evaluate` and `Runtime.callFunctionOn`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Evaluate {
    /// The value.
    pub result: RemoteObject,
    /// Set when the script threw.
    pub exception_details: Option<ExceptionDetails>,
}

/// `Runtime.StackTrace`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct StackTrace {
    /// Frames, innermost first.
    pub call_frames: Vec<CallFrame>,
}

/// `Runtime.CallFrame`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CallFrame {
    /// Function name.
    pub function_name: String,
    /// Script URL.
    pub url: String,
    /// Line (0-based).
    pub line_number: i64,
    /// Column (0-based).
    pub column_number: i64,
}

/// `Runtime.consoleAPICalled`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsoleApiCalled {
    /// `log`, `debug`, `info`, `error`, `warning`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The arguments.
    pub args: Vec<RemoteObject>,
    /// When (ms since the epoch).
    pub timestamp: f64,
    /// Where.
    pub stack_trace: Option<StackTrace>,
}

/// `Runtime.exceptionThrown`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ExceptionThrown {
    /// When (ms since the epoch).
    pub timestamp: f64,
    /// What.
    pub exception_details: ExceptionDetails,
}

/// `Log.entryAdded`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LogEntryAdded {
    /// The entry.
    pub entry: LogEntry,
}

/// `Log.LogEntry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LogEntry {
    /// `network`, `javascript`, `security`, ...
    pub source: String,
    /// `verbose`, `info`, `warning`, `error`.
    pub level: String,
    /// Text.
    pub text: String,
    /// URL of the resource.
    pub url: Option<String>,
    /// When (ms since the epoch).
    pub timestamp: f64,
}

/// `Network.Request`, also inside `Fetch.requestPaused`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Request {
    /// URL (without fragment).
    pub url: String,
    /// Method.
    pub method: String,
    /// Headers.
    pub headers: Map<String, Value>,
}

/// `Network.Response`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Response {
    /// URL.
    pub url: String,
    /// HTTP status.
    pub status: f64,
    /// Headers.
    pub headers: Map<String, Value>,
    /// MIME type.
    pub mime_type: String,
}

/// `Network.requestWillBeSent`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestWillBeSent {
    /// Request id.
    pub request_id: String,
    /// The request.
    pub request: Request,
    /// Monotonic seconds.
    pub timestamp: f64,
    /// Wall seconds since the epoch.
    pub wall_time: f64,
    /// `Document`, `XHR`, `Fetch`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The response that redirected here, if this is a redirect.
    pub redirect_response: Option<Response>,
}

/// `Network.responseReceived`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ResponseReceived {
    /// Request id.
    pub request_id: String,
    /// Monotonic seconds.
    pub timestamp: f64,
    /// `Document`, `XHR`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The response.
    pub response: Response,
}

/// `Network.loadingFinished`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadingFinished {
    /// Request id.
    pub request_id: String,
    /// Monotonic seconds.
    pub timestamp: f64,
    /// Bytes received.
    pub encoded_data_length: f64,
}

/// `Network.loadingFailed`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadingFailed {
    /// Request id.
    pub request_id: String,
    /// Monotonic seconds.
    pub timestamp: f64,
    /// e.g. `net::ERR_BLOCKED_BY_CLIENT`.
    pub error_text: String,
    /// Cancelled by the page.
    pub canceled: bool,
}

/// `Fetch.requestPaused`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestPaused {
    /// The paused request (answer with `Fetch.continueRequest` or `Fetch.failRequest`).
    pub request_id: String,
    /// The request.
    pub request: Request,
    /// `Document`, `Script`, ...
    pub resource_type: String,
    /// The matching `Network` request id.
    pub network_id: Option<String>,
    /// Set when paused at the response stage.
    pub response_status_code: Option<f64>,
}

/// `Browser.downloadWillBegin`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadWillBegin {
    /// The frame that started it.
    pub frame_id: String,
    /// Download id.
    pub guid: String,
    /// Source URL.
    pub url: String,
    /// The name the page suggested.
    pub suggested_filename: String,
}

/// `Browser.downloadProgress`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadProgress {
    /// Download id.
    pub guid: String,
    /// Expected size (0 when unknown).
    pub total_bytes: f64,
    /// Received so far.
    pub received_bytes: f64,
    /// `inProgress`, `completed`, `canceled`.
    pub state: String,
    /// Where the file is (Chromium 128+ with `eventsEnabled`).
    pub file_path: Option<String>,
}

/// Result of `Page.captureScreenshot` and `Page.printToPDF`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Data {
    /// Base64 of the image or document.
    pub data: String,
}

/// `Network.Cookie`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Cookie {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Domain.
    pub domain: String,
    /// Path.
    pub path: String,
}

/// Result of `Storage.getCookies`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GetCookies {
    /// Every cookie of the context.
    pub cookies: Vec<Cookie>,
}
