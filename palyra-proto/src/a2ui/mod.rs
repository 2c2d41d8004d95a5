//! A2UI (agent-to-UI) surfaces: documents `{"v":1,"surface","components":[...]}` changed by
//! JSON-pointer patches `{"v":1,"ops":[{"op":"add|replace|remove","path","value"}]}`, with every
//! limit enforced by the server, versions, stale-base conflicts, and the patch-stream machine
//! (replay from a version, snapshot on a gap, coalescing for slow readers) every transport uses.

use serde_json::Value;

pub mod state;
pub mod stream;

/// The only document and patch version.
pub const VERSION: u64 = 1;
/// Most operations in one patch.
pub const MAX_OPS: usize = 512;
/// Longest JSON pointer.
pub const MAX_PATH: usize = 512;
/// Largest encoded patch.
pub const MAX_PATCH_BYTES: usize = 256 * 1024;
/// Largest encoded document.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of a document or value.
pub const MAX_DEPTH: usize = 32;
/// Most components in a document.
pub const MAX_COMPONENTS: usize = 1024;
/// Longest surface name and component id.
pub const MAX_NAME: usize = 128;
/// Component types (`buttons`: a row of buttons, each sending `a2ui.action` with its `action`).
pub const COMPONENT_TYPES: [&str; 7] = [
    "text", "markdown", "list", "table", "form", "chart", "buttons",
];
/// Keys refused anywhere (prototype pollution in JavaScript renderers).
pub const FORBIDDEN_KEYS: [&str; 3] = ["__proto__", "prototype", "constructor"];

/// Why a document or patch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum A2uiError {
    /// Malformed input.
    #[error("invalid A2UI {what}: {message}")]
    Invalid {
        /// `document` or `patch`.
        what: &'static str,
        /// Details.
        message: String,
    },
    /// A limit was exceeded.
    #[error("A2UI limit exceeded: {0}")]
    Limit(String),
    /// An operation does not fit the document (missing key, index out of range, ...).
    #[error("patch operation {index} conflicts with the document: {message}")]
    Conflict {
        /// Index of the failing operation.
        index: usize,
        /// Details.
        message: String,
    },
    /// The patch was made against an older version.
    #[error("stale base_version {base}: surface is at version {current}")]
    Stale {
        /// The patch's base.
        base: u64,
        /// The surface's version.
        current: u64,
    },
}

impl A2uiError {
    /// Short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_patch",
            Self::Limit(_) => "limit_exceeded",
            Self::Conflict { .. } => "conflict",
            Self::Stale { .. } => "stale_base_version",
        }
    }
}

fn invalid(what: &'static str, message: impl Into<String>) -> A2uiError {
    A2uiError::Invalid {
        what,
        message: message.into(),
    }
}

/// Kind of a patch operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Insert or overwrite.
    Add,
    /// Overwrite an existing member.
    Replace,
    /// Delete an existing member.
    Remove,
}

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// What to do.
    pub kind: OpKind,
    /// Decoded pointer tokens (empty: the root).
    pub path: Vec<String>,
    /// The value (add, replace).
    pub value: Option<Value>,
}

/// Checks nesting depth (from `depth`) and forbidden keys of a value.
pub fn check_value(value: &Value, depth: usize) -> Result<(), A2uiError> {
    if depth > MAX_DEPTH {
        return Err(A2uiError::Limit(format!("nesting deeper than {MAX_DEPTH}")));
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if FORBIDDEN_KEYS.contains(&k.as_str()) {
                    return Err(invalid("value", format!("forbidden key {k:?}")));
                }
                check_value(v, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                check_value(v, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Decodes a JSON pointer (RFC 6901): `""` or `/`-separated tokens with `~0`, `~1` escapes.
pub fn parse_pointer(path: &str) -> Result<Vec<String>, A2uiError> {
    if path.len() > MAX_PATH {
        return Err(A2uiError::Limit(format!(
            "path longer than {MAX_PATH} bytes"
        )));
    }
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(invalid(
            "patch",
            format!("pointer {path:?} must start with '/'"),
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(invalid("patch", format!("bad escape in pointer {path:?}")))
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            if FORBIDDEN_KEYS.contains(&out.as_str()) {
                return Err(invalid("patch", format!("forbidden pointer token {out:?}")));
            }
            Ok(out)
        })
        .collect()
}

/// Parses and checks a patch `{"v":1,"ops":[...]}` (limits included).
pub fn parse_patch(patch: &Value) -> Result<Vec<Op>, A2uiError> {
    let size = serde_json::to_vec(patch)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PATCH_BYTES {
        return Err(A2uiError::Limit(format!(
            "patch larger than {MAX_PATCH_BYTES} bytes"
        )));
    }
    if patch.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(invalid("patch", "v must be 1"));
    }
    let ops = patch
        .get("ops")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("patch", "ops must be an array"))?;
    if ops.is_empty() {
        return Err(invalid("patch", "ops is empty"));
    }
    if ops.len() > MAX_OPS {
        return Err(A2uiError::Limit(format!("more than {MAX_OPS} operations")));
    }
    ops.iter()
        .map(|op| {
            let kind = match op.get("op").and_then(Value::as_str) {
                Some("add") => OpKind::Add,
                Some("replace") => OpKind::Replace,
                Some("remove") => OpKind::Remove,
                other => return Err(invalid("patch", format!("unsupported op {other:?}"))),
            };
            let path = op
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("patch", "path must be a string"))?;
            let value = op.get("value").cloned();
            match (kind, &value) {
                (OpKind::Remove, Some(_)) => return Err(invalid("patch", "remove takes no value")),
                (OpKind::Add | OpKind::Replace, None) => {
                    return Err(invalid("patch", "add and replace need a value"))
                }
                (_, Some(v)) => check_value(v, 1)?,
                _ => {}
            }
            Ok(Op {
                kind,
                path: parse_pointer(path)?,
                value,
            })
        })
        .collect()
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if token == "-" && allow_end {
        return Ok(len);
    }
    let canonical = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'))
        && token.len() <= 10;
    let index: usize = if canonical {
        token
            .parse()
            .map_err(|_| format!("bad array index {token:?}"))?
    } else {
        return Err(format!("bad array index {token:?}"));
    };
    let limit = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if index > limit || (!allow_end && len == 0) {
        return Err(format!("index {index} out of range (length {len})"));
    }
    Ok(index)
}

fn apply_op(doc: &mut Value, op: &Op) -> Result<(), String> {
    let Some((last, parents)) = op.path.split_last() else {
        return match op.kind {
            OpKind::Remove => Err("cannot remove the document root".into()),
            _ => {
                *doc = op.value.clone().unwrap_or(Value::Null);
                Ok(())
            }
        };
    };
    let mut target = doc;
    for token in parents {
        target = match target {
            Value::Object(map) => map
                .get_mut(token)
                .ok_or_else(|| format!("missing key {token:?}"))?,
            Value::Array(items) => {
                let i = array_index(token, items.len(), false)?;
                &mut items[i]
            }
            _ => return Err(format!("{token:?} is below a scalar")),
        };
    }
    match target {
        Value::Object(map) => match op.kind {
            OpKind::Add => {
                map.insert(last.clone(), op.value.clone().unwrap_or(Value::Null));
            }
            OpKind::Replace => {
                let slot = map
                    .get_mut(last)
                    .ok_or_else(|| format!("missing key {last:?}"))?;
                *slot = op.value.clone().unwrap_or(Value::Null);
            }
            OpKind::Remove => {
                map.remove(last)
                    .ok_or_else(|| format!("missing key {last:?}"))?;
            }
        },
        Value::Array(items) => match op.kind {
            OpKind::Add => {
                let i = array_index(last, items.len(), true)?;
                items.insert(i, op.value.clone().unwrap_or(Value::Null));
            }
            OpKind::Replace => {
                let i = array_index(last, items.len(), false)?;
                items[i] = op.value.clone().unwrap_or(Value::Null);
            }
            OpKind::Remove => {
                let i = array_index(last, items.len(), false)?;
                items.remove(i);
            }
        },
        _ => return Err(format!("{last:?} is below a scalar")),
    }
    Ok(())
}

/// Applies `ops` to a copy of `doc`: all of them or none (the first failure is reported).
pub fn apply(doc: &Value, ops: &[Op]) -> Result<Value, A2uiError> {
    let mut next = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        apply_op(&mut next, op).map_err(|message| A2uiError::Conflict { index, message })?;
    }
    Ok(next)
}

/// Checks a whole document: version, surface, component list and types, limits.
pub fn validate_document(doc: &Value) -> Result<(), A2uiError> {
    let size = serde_json::to_vec(doc)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        return Err(A2uiError::Limit(format!(
            "document larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    check_value(doc, 1)?;
    let map = doc
        .as_object()
        .ok_or_else(|| invalid("document", "must be an object"))?;
    if map.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(invalid("document", "v must be 1"));
    }
    let surface = map.get("surface").and_then(Value::as_str).unwrap_or("");
    if surface.is_empty() || surface.len() > MAX_NAME {
        return Err(invalid(
            "document",
            format!("surface must be 1..={MAX_NAME} bytes"),
        ));
    }
    let components = map
        .get("components")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("document", "components must be an array"))?;
    if components.len() > MAX_COMPONENTS {
        return Err(A2uiError::Limit(format!(
            "more than {MAX_COMPONENTS} components"
        )));
    }
    let mut ids = std::collections::HashSet::new();
    for c in components {
        let id = c.get("id").and_then(Value::as_str).unwrap_or("");
        if id.is_empty() || id.len() > MAX_NAME {
            return Err(invalid(
                "document",
                "every component needs an id of 1..=128 bytes",
            ));
        }
        if !ids.insert(id) {
            return Err(invalid(
                "document",
                format!("duplicate component id {id:?}"),
            ));
        }
        let kind = c.get("type").and_then(Value::as_str).unwrap_or("");
        if !COMPONENT_TYPES.contains(&kind) {
            return Err(invalid(
                "document",
                format!("component {id:?} has unknown type {kind:?}"),
            ));
        }
        if c.get("props").is_some_and(|p| !p.is_object()) {
            return Err(invalid(
                "document",
                format!("props of {id:?} must be an object"),
            ));
        }
    }
    Ok(())
}

/// One change as it goes to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Operations taking the surface from `base_version` to `version`.
    Patch {
        /// Surface name.
        surface: String,
        /// Version after the patch.
        version: u64,
        /// Version the patch applies to.
        base_version: u64,
        /// The operations, as sent (`[{"op","path","value"}]`).
        ops: Value,
    },
    /// The whole document at `version`.
    Snapshot {
        /// Surface name.
        surface: String,
        /// Its version.
        version: u64,
        /// The document.
        document: Value,
    },
}

/// A live surface: current document and version. Replay and coalescing for subscribers are the
/// stream machine's ([`stream`]), over the durable console log.
#[derive(Debug, Clone)]
pub struct Surface {
    name: String,
    version: u64,
    document: Value,
}

impl Surface {
    /// A surface starting at version 1 with `document` (validated).
    pub fn new(document: Value) -> Result<Self, A2uiError> {
        validate_document(&document)?;
        let name = document["surface"].as_str().unwrap_or_default().to_owned();
        Ok(Self {
            name,
            version: 1,
            document,
        })
    }

    /// Surface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (a surface restored from the log keeps its numbering).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// Current document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Applies a patch made against `base_version` (`None`: the current one). The result must
    /// still be a valid document and keep the surface name. Returns the update to publish.
    pub fn apply_patch(
        &mut self,
        base_version: Option<u64>,
        patch: &Value,
    ) -> Result<Update, A2uiError> {
        let base = base_version.unwrap_or(self.version);
        if base != self.version {
            return Err(A2uiError::Stale {
                base,
                current: self.version,
            });
        }
        let ops = parse_patch(patch)?;
        let next = apply(&self.document, &ops)?;
        validate_document(&next)?;
        if next["surface"] != self.document["surface"] {
            return Err(invalid("patch", "a patch cannot rename the surface"));
        }
        self.document = next;
        self.version += 1;
        Ok(Update::Patch {
            surface: self.name.clone(),
            version: self.version,
            base_version: base,
            ops: patch["ops"].clone(),
        })
    }

    /// The full state as an update.
    pub fn snapshot(&self) -> Update {
        Update::Snapshot {
            surface: self.name.clone(),
            version: self.version,
            document: self.document.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
