//! Who is calling and what they may do. A principal is proven by a credential, never asserted:
//! the admin token is `admin:local` with every scope; an API token (minted by the admin, see
//! [`tokens`]) is its own principal with the scopes it was minted with. `x-palyra-principal`
//! may narrow a call to a sub-principal (`user:alice/editor` for a token of `user:alice`; any
//! principal for the admin), never widen it.
//!
//! Resources (sessions, runs, approvals) belong to the principal that made them; a caller sees
//! its own and those of its sub-principals, and the admin (not narrowed) sees everything.

pub mod admin;
pub mod tokens;

use admin::{AdminAuth, Denied};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokens::TokenStore;

/// The admin token's principal.
pub const ADMIN_PRINCIPAL: &str = "admin:local";
/// Metadata naming a narrower principal for one call.
pub const PRINCIPAL_HEADER: &str = "x-palyra-principal";
/// Longest principal.
pub const MAX_PRINCIPAL: usize = 128;
/// What a paired device's certificate may do on the node TLS listener (as `node:<device_id>`):
/// run agents in its own sessions and read its approvals, never answer an approval.
pub const NODE_SCOPES: [Scope; 5] = [
    Scope::RunsWrite,
    Scope::RunsRead,
    Scope::SessionsRead,
    Scope::SessionsWrite,
    Scope::ApprovalsRead,
];

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Start, continue and abort runs.
    RunsWrite,
    /// List runs and read their tapes.
    RunsRead,
    /// List and resolve sessions.
    SessionsRead,
    /// Create, reset and clean up sessions.
    SessionsWrite,
    /// List, read and export approval records.
    ApprovalsRead,
    /// Answer approval requests (without it, a run's calls that need an approval are denied).
    ApprovalsWrite,
    /// The OpenAI-compatible API.
    OpenaiUse,
    /// The OpenAI-compatible API's `palyra-agent` model may call the gateway's own tools (node
    /// capabilities, gateway tools), each call under the tool policy and its approvals.
    OpenaiTools,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 8] = [
        Scope::RunsWrite,
        Scope::RunsRead,
        Scope::SessionsRead,
        Scope::SessionsWrite,
        Scope::ApprovalsRead,
        Scope::ApprovalsWrite,
        Scope::OpenaiUse,
        Scope::OpenaiTools,
    ];

    /// Its name on the wire and in the CLI (`runs:write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RunsWrite => "runs:write",
            Scope::RunsRead => "runs:read",
            Scope::SessionsRead => "sessions:read",
            Scope::SessionsWrite => "sessions:write",
            Scope::ApprovalsRead => "approvals:read",
            Scope::ApprovalsWrite => "approvals:write",
            Scope::OpenaiUse => "openai:use",
            Scope::OpenaiTools => "openai:tools",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    /// Every scope.
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The names, in a stable order.
    pub fn names(self) -> Vec<String> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(|s| s.as_str().to_owned())
            .collect()
    }

    /// Parses scope names; an unknown one is an error naming it and the known ones.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        names
            .iter()
            .map(|n| {
                Scope::parse(n.as_ref().trim()).ok_or_else(|| {
                    format!(
                        "unknown scope {:?}; known scopes: {}",
                        n.as_ref(),
                        Scopes::all().names().join(", ")
                    )
                })
            })
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

/// Checks a principal's syntax: `kind:name`, the kind of `a-z`, the name of letters, digits and
/// `._@-/`, at most [`MAX_PRINCIPAL`] bytes.
pub fn valid_principal(principal: &str) -> Result<(), String> {
    let Some((kind, name)) = principal.split_once(':') else {
        return Err(format!(
            "principal {principal:?} must be kind:name, e.g. user:alice"
        ));
    };
    let ok_kind = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase());
    let ok_name = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-/".contains(&b));
    if principal.len() > MAX_PRINCIPAL || !ok_kind || !ok_name {
        return Err(format!(
            "principal {principal:?} must be kind:name (kind a-z; name letters, digits and ._@-/), \
             at most {MAX_PRINCIPAL} bytes"
        ));
    }
    Ok(())
}

/// Whether `principal` is `base` or one of its sub-principals (`base/...`).
pub fn within(principal: &str, base: &str) -> bool {
    principal == base
        || principal
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who, after any narrowing.
    pub principal: String,
    /// What it may do.
    pub scopes: Scopes,
    /// The admin token, not narrowed: sees every principal's resources.
    pub sees_all: bool,
}

impl Caller {
    /// The admin token's caller.
    pub fn admin() -> Self {
        Self {
            principal: ADMIN_PRINCIPAL.into(),
            scopes: Scopes::all(),
            sees_all: true,
        }
    }

    /// The caller a paired device's certificate proves: `node:<device_id>` with [`NODE_SCOPES`].
    pub fn node(device_id: &str) -> Self {
        Self {
            principal: format!("node:{device_id}"),
            scopes: NODE_SCOPES.into_iter().collect(),
            sees_all: false,
        }
    }

    /// PERMISSION_DENIED unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Status> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Status::new(
                Code::PermissionDenied,
                format!(
                    "principal {} lacks the scope {} (it has: {})",
                    self.principal,
                    scope.as_str(),
                    match self.scopes.names() {
                        names if names.is_empty() => "none".to_owned(),
                        names => names.join(", "),
                    }
                ),
            ))
        }
    }

    /// Whether a resource of `owner` is visible to the caller.
    pub fn owns(&self, owner: &str) -> bool {
        self.sees_all || within(owner, &self.principal)
    }

    /// Narrows the caller to `principal` (from `x-palyra-principal`): the admin may act as any
    /// principal; another caller only as itself or a sub-principal.
    pub fn narrow(mut self, principal: &str) -> Result<Self, Status> {
        let principal = principal.trim();
        valid_principal(principal).map_err(|e| Status::new(Code::InvalidArgument, e))?;
        if principal == self.principal {
            return Ok(self);
        }
        if !(self.sees_all || within(principal, &self.principal)) {
            return Err(Status::new(
                Code::PermissionDenied,
                format!(
                    "{PRINCIPAL_HEADER} {principal} is not {} or one of its sub-principals \
                     ({}/...): a credential can narrow its principal, never widen it",
                    self.principal, self.principal
                ),
            ));
        }
        self.principal = principal.to_owned();
        self.sees_all = false;
        Ok(self)
    }
}

/// The device a TLS peer's certificate belongs to, if it is paired and not revoked
/// (UNAUTHENTICATED or PERMISSION_DENIED otherwise).
pub type DeviceCheck =
    Arc<dyn Fn(&palyra_proto::transport::PeerIdentity) -> Result<Arc<str>, Status> + Send + Sync>;

/// Proves callers: the admin token, the API tokens and, on the node TLS listener, the
/// certificates of paired devices.
#[derive(Clone)]
pub struct Authenticator {
    admin: Arc<AdminAuth>,
    tokens: Arc<TokenStore>,
    clock: crate::util::WallClock,
    devices: Option<DeviceCheck>,
}

impl Authenticator {
    /// Checks the admin token with `admin` and API tokens with `tokens`, expiring at `clock`.
    pub fn new(
        admin: Arc<AdminAuth>,
        tokens: Arc<TokenStore>,
        clock: crate::util::WallClock,
    ) -> Self {
        Self {
            admin,
            tokens,
            clock,
            devices: None,
        }
    }

    /// The same, also taking a call without a bearer credential from a peer whose certificate
    /// `devices` maps to a paired device as that device (`node:<device_id>`).
    pub fn with_devices(&self, devices: DeviceCheck) -> Self {
        Self {
            devices: Some(devices),
            ..self.clone()
        }
    }

    /// The API tokens.
    pub fn tokens(&self) -> &Arc<TokenStore> {
        &self.tokens
    }

    /// Who sent a bearer credential (`Authorization` value) from `ip`: UNAUTHENTICATED when it is
    /// missing or proves nobody, RESOURCE_EXHAUSTED after too many failures from the address.
    pub fn bearer(
        &self,
        authorization: Option<&[u8]>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Caller, Status> {
        let Some(value) = authorization else {
            return Err(Status::new(
                Code::Unauthenticated,
                "missing credential: send `authorization: Bearer TOKEN` (the admin token or an \
                 API token from `palyra tokens create`)",
            ));
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().split_once(char::is_whitespace))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or("");
        if token.starts_with(tokens::TOKEN_PREFIX) {
            return self
                .tokens
                .authenticate(token, (self.clock)())
                .map_err(|e| Status::new(Code::Unauthenticated, e.to_string()));
        }
        match self.admin.check(Some(value), ip, now) {
            Ok(()) => Ok(Caller::admin()),
            Err(Denied::Unauthorized) => Err(Status::new(
                Code::Unauthenticated,
                "the credential is neither the admin token nor an API token",
            )),
            Err(Denied::RateLimited(after)) => Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "too many failed credentials from this address; retry in {} s",
                    after.as_secs().max(1)
                ),
            )),
        }
    }

    /// Who is making a gRPC call: its `authorization`, or else (where devices are checked) its
    /// TLS peer's device certificate, then any `x-palyra-principal` narrowing.
    pub fn call(&self, call: &palyra_proto::grpc::service::CallInfo) -> Result<Caller, Status> {
        let has_bearer = call
            .metadata
            .iter()
            .any(|f| f.name.as_ref() == b"authorization");
        match &self.devices {
            Some(check) if !has_bearer && call.peer.spki_sha256.is_some() => {
                let device = check(&call.peer)?;
                narrow_by(&call.metadata, Caller::node(&device))
            }
            _ => self.grpc(
                &call.metadata,
                call.peer.remote.map(|a| a.ip()),
                call.started,
            ),
        }
    }

    /// Who is calling a gRPC method with `metadata` from `ip` (`authorization`, then any
    /// `x-palyra-principal` narrowing).
    pub fn grpc(
        &self,
        metadata: &[Field],
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Caller, Status> {
        let authorization = metadata
            .iter()
            .find(|f| f.name.as_ref() == b"authorization")
            .map(|f| f.value.as_ref());
        narrow_by(metadata, self.bearer(authorization, ip, now)?)
    }
}

/// `caller` narrowed by the call's `x-palyra-principal`, if it has one.
fn narrow_by(metadata: &[Field], caller: Caller) -> Result<Caller, Status> {
    let Some(field) = metadata
        .iter()
        .find(|f| f.name.as_ref() == PRINCIPAL_HEADER.as_bytes())
    else {
        return Ok(caller);
    };
    let value = std::str::from_utf8(&field.value).map_err(|_| {
        Status::new(
            Code::InvalidArgument,
            format!("{PRINCIPAL_HEADER} is not UTF-8"),
        )
    })?;
    caller.narrow(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_narrow_and_never_widen() {
        let admin = Caller::admin();
        assert!(admin.owns("user:bob"));
        let bob = admin.clone().narrow("user:bob").unwrap();
        assert!(!bob.sees_all && bob.owns("user:bob") && !bob.owns("user:alice"));
        let alice = Caller {
            principal: "user:alice".into(),
            scopes: Scopes::parse(&["runs:write"]).unwrap(),
            sees_all: false,
        };
        let editor = alice.clone().narrow("user:alice/editor").unwrap();
        assert!(editor.owns("user:alice/editor") && !editor.owns("user:alice"));
        assert!(alice.owns("user:alice/editor"));
        assert!(!alice.owns("user:alice2"));
        let widen = alice.clone().narrow("admin:local").unwrap_err();
        assert_eq!(widen.code, Code::PermissionDenied);
        let sibling = alice.clone().narrow("user:alicex").unwrap_err();
        assert_eq!(sibling.code, Code::PermissionDenied);
        assert_eq!(
            alice.narrow("nonsense").unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn scopes_are_named_and_required() {
        let scopes = Scopes::parse(&["runs:write", "sessions:read"]).unwrap();
        assert_eq!(scopes.names(), vec!["runs:write", "sessions:read"]);
        assert!(Scopes::parse(&["runs:everything"])
            .unwrap_err()
            .contains("known scopes: runs:write"));
        let caller = Caller {
            principal: "user:x".into(),
            scopes,
            sees_all: false,
        };
        assert!(caller.require(Scope::RunsWrite).is_ok());
        let denied = caller.require(Scope::ApprovalsRead).unwrap_err();
        assert_eq!(denied.code, Code::PermissionDenied);
        assert!(
            denied.message.contains("approvals:read"),
            "{}",
            denied.message
        );
    }

    #[test]
    fn principal_syntax() {
        for ok in [
            "user:alice",
            "node:01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "user:a.b@c/d-e",
        ] {
            assert!(valid_principal(ok).is_ok(), "{ok}");
        }
        for bad in [
            "alice",
            ":x",
            "User:x",
            "user:",
            "user:a//b",
            "user:a/",
            "user:a b",
        ] {
            assert!(valid_principal(bad).is_err(), "{bad}");
        }
    }
}
