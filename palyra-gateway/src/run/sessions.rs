//! Sessions: the conversations runs continue, each owned by a principal, found by ID or by a key
//! unique per principal, kept in the document `runs/sessions.json` with the approval decisions
//! cached for them. The conversation itself is on the run tape (each run's transcript).

use super::machine::CachedDecision;
use crate::access::Caller;
use crate::notify::Notifier;
use crate::store::{DocStore, Document, StoreError};
use palyra_proto::grpc::{Code, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The sessions' document.
pub const SESSIONS_KEY: &str = "runs/sessions.json";
/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 100_000;
/// Longest session key.
pub const MAX_KEY: usize = 128;
/// Longest label.
pub const MAX_LABEL: usize = 256;
/// Cached decisions kept per session.
pub const MAX_CACHED: usize = 64;

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Its ID (ULID).
    pub session_id: String,
    /// Its key, unique per principal (may be empty).
    pub session_key: String,
    /// A label for people.
    pub session_label: String,
    /// Who owns it.
    pub principal: String,
    /// When it was made.
    pub created_at_unix_ms: u64,
    /// When a run last started or ended in it.
    pub updated_at_unix_ms: u64,
    /// When it was cleaned up.
    pub archived_at_unix_ms: Option<u64>,
    /// Its latest run.
    pub last_run_id: Option<String>,
    /// That run's state.
    pub last_run_state: String,
    /// Runs started in it.
    pub run_count: u32,
    /// Runs started before this time are not part of its conversation (a reset).
    pub history_from_unix_ms: u64,
    /// The start of the latest input.
    pub preview: String,
    /// Approval decisions cached for the session.
    pub cached: Vec<CachedDecision>,
}

/// What a caller asks to resolve.
#[derive(Debug, Clone, Default)]
pub struct Resolve {
    /// The session's ID, if the caller names one (a new session gets it).
    pub session_id: Option<String>,
    /// Its key.
    pub session_key: String,
    /// Its label (set when given).
    pub session_label: String,
    /// Fail with NOT_FOUND instead of creating.
    pub require_existing: bool,
    /// Start its conversation afresh and forget its cached decisions.
    pub reset: bool,
}

/// A resolved session.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The session.
    pub session: SessionRecord,
    /// It was made by this call.
    pub created: bool,
    /// A reset was applied.
    pub reset_applied: bool,
}

/// Checks a session key's syntax.
pub fn check_key(key: &str) -> Result<(), Status> {
    let ok = key.len() <= MAX_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::new(
            Code::InvalidArgument,
            format!("session_key must be at most {MAX_KEY} of letters, digits and ._:-/"),
        ))
    }
}

/// The sessions of the gateway.
pub struct SessionStore {
    doc: Arc<Document<BTreeMap<String, SessionRecord>>>,
}

/// A change of the sessions answered once durable.
pub type Change<T> = crate::store::Pending<Result<T, StoreError>>;

impl SessionStore {
    /// Opens the sessions of `docs`; completed changes wake `wake`.
    pub fn open(docs: Arc<dyn DocStore>, wake: Option<Arc<Notifier>>) -> Result<Self, StoreError> {
        let doc = Document::open(
            docs,
            SESSIONS_KEY,
            |bytes| match bytes {
                None => Ok(BTreeMap::new()),
                Some(bytes) => serde_json::from_slice(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{SESSIONS_KEY}: {e}"))),
            },
            |map: &BTreeMap<String, SessionRecord>| serde_json::to_vec(map).unwrap_or_default(),
            wake,
        )?;
        Ok(Self { doc })
    }

    /// The session `id`, if `caller` may see it.
    pub fn get(&self, caller: &Caller, id: &str) -> Option<SessionRecord> {
        self.doc
            .read(|map| map.get(id).cloned())
            .filter(|s| caller.owns(&s.principal))
    }

    /// The caller's sessions by key, after `after_key`, at most `limit`.
    pub fn list(
        &self,
        caller: &Caller,
        after_key: &str,
        limit: usize,
        include_archived: bool,
        query: &str,
    ) -> Vec<SessionRecord> {
        let query = query.to_lowercase();
        let mut list: Vec<SessionRecord> = self.doc.read(|map| {
            map.values()
                .filter(|s| caller.owns(&s.principal))
                .filter(|s| include_archived || s.archived_at_unix_ms.is_none())
                .filter(|s| {
                    query.is_empty()
                        || s.session_key.to_lowercase().contains(&query)
                        || s.session_label.to_lowercase().contains(&query)
                        || s.preview.to_lowercase().contains(&query)
                })
                .cloned()
                .collect()
        });
        list.sort_by(|a, b| {
            (a.session_key.as_str(), a.session_id.as_str())
                .cmp(&(b.session_key.as_str(), b.session_id.as_str()))
        });
        list.retain(|s| after_key.is_empty() || s.session_key.as_str() > after_key);
        list.truncate(limit);
        list
    }

    /// Finds or makes the session `request` names for `caller` at `now_ms`; `new_id` names a new
    /// one the caller did not name. `then` gets the outcome once it is durable (on the store's
    /// thread, or at once).
    pub fn resolve(
        &self,
        caller: &Caller,
        request: Resolve,
        now_ms: u64,
        new_id: String,
        then: impl FnOnce(Result<Result<Resolved, Status>, StoreError>) + Send + 'static,
    ) {
        let caller = caller.clone();
        self.doc.update_then(
            move |map| resolve_in(map, &caller, request, now_ms, new_id),
            then,
        );
    }

    /// Records that `run_id` started in `session_id` with `preview` as its input.
    pub fn run_started(&self, session_id: &str, run_id: &str, preview: &str, now_ms: u64) {
        let (session, run, preview) =
            (session_id.to_owned(), run_id.to_owned(), preview.to_owned());
        drop(self.doc.update(move |map| {
            if let Some(s) = map.get_mut(&session) {
                s.last_run_id = Some(run);
                s.last_run_state = "in_progress".into();
                s.run_count += 1;
                s.updated_at_unix_ms = now_ms;
                s.preview = preview;
            }
        }));
    }

    /// Records the end state of a session's run.
    pub fn run_ended(&self, session_id: &str, run_id: &str, state: &str, now_ms: u64) {
        let (session, run, state) = (session_id.to_owned(), run_id.to_owned(), state.to_owned());
        drop(self.doc.update(move |map| {
            if let Some(s) = map.get_mut(&session) {
                if s.last_run_id.as_deref() == Some(run.as_str()) {
                    s.last_run_state = state;
                }
                s.updated_at_unix_ms = now_ms;
            }
        }));
    }

    /// Caches an approval decision in a session.
    pub fn remember(&self, session_id: &str, decision: CachedDecision) {
        let session = session_id.to_owned();
        drop(self.doc.update(move |map| {
            if let Some(s) = map.get_mut(&session) {
                s.cached.retain(|d| d.tool != decision.tool);
                s.cached.push(decision);
                if s.cached.len() > MAX_CACHED {
                    s.cached.remove(0);
                }
            }
        }));
    }

    /// Archives a session (its key is freed for a new one): answered with the session before and
    /// after, or NOT_FOUND.
    pub fn cleanup(
        &self,
        caller: &Caller,
        session_id: Option<String>,
        session_key: String,
        now_ms: u64,
    ) -> Change<Result<(SessionRecord, bool), Status>> {
        let caller = caller.clone();
        self.doc.update(move |map| {
            let id = find(map, &caller, session_id.as_deref(), &session_key)
                .ok_or_else(|| Status::new(Code::NotFound, "no such session"))?;
            let session = map
                .get_mut(&id)
                .ok_or_else(|| Status::new(Code::NotFound, "no such session"))?;
            let newly = session.archived_at_unix_ms.is_none();
            if newly {
                session.archived_at_unix_ms = Some(now_ms);
                session.cached.clear();
                session.updated_at_unix_ms = now_ms;
            }
            Ok((session.clone(), newly))
        })
    }
}

/// The ID of the caller's session named by `id` or by `key` (not archived).
fn find(
    map: &BTreeMap<String, SessionRecord>,
    caller: &Caller,
    id: Option<&str>,
    key: &str,
) -> Option<String> {
    match id {
        Some(id) => map
            .get(id)
            .filter(|s| caller.owns(&s.principal))
            .map(|s| s.session_id.clone()),
        None if key.is_empty() => None,
        None => map
            .values()
            .find(|s| {
                s.principal == caller.principal
                    && s.session_key == key
                    && s.archived_at_unix_ms.is_none()
            })
            .map(|s| s.session_id.clone()),
    }
}

fn resolve_in(
    map: &mut BTreeMap<String, SessionRecord>,
    caller: &Caller,
    request: Resolve,
    now_ms: u64,
    new_id: String,
) -> Result<Resolved, Status> {
    check_key(&request.session_key)?;
    if request.session_label.len() > MAX_LABEL {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("session_label is longer than {MAX_LABEL} bytes"),
        ));
    }
    if let Some(id) = &request.session_id {
        if !palyra_proto::identity::is_canonical_device_id(id) {
            return Err(Status::new(
                Code::InvalidArgument,
                "session_id must be a canonical ULID",
            ));
        }
        if map.get(id).is_some_and(|s| !caller.owns(&s.principal)) {
            // Another principal's session is not acknowledged at all.
            return Err(Status::new(Code::NotFound, format!("no session {id}")));
        }
    }
    let found = find(
        map,
        caller,
        request.session_id.as_deref(),
        &request.session_key,
    );
    let Some(id) = found else {
        if request.require_existing {
            return Err(Status::new(
                Code::NotFound,
                "no such session (require_existing is set)",
            ));
        }
        if map.len() >= MAX_SESSIONS {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("at most {MAX_SESSIONS} sessions are kept"),
            ));
        }
        let session = SessionRecord {
            session_id: request.session_id.unwrap_or(new_id),
            session_key: request.session_key,
            session_label: request.session_label,
            principal: caller.principal.clone(),
            created_at_unix_ms: now_ms,
            updated_at_unix_ms: now_ms,
            archived_at_unix_ms: None,
            last_run_id: None,
            last_run_state: String::new(),
            run_count: 0,
            history_from_unix_ms: 0,
            preview: String::new(),
            cached: Vec::new(),
        };
        map.insert(session.session_id.clone(), session.clone());
        return Ok(Resolved {
            session,
            created: true,
            reset_applied: false,
        });
    };
    let session = map
        .get_mut(&id)
        .ok_or_else(|| Status::new(Code::NotFound, "no such session"))?;
    if session.archived_at_unix_ms.is_some() {
        return Err(Status::new(
            Code::FailedPrecondition,
            format!("session {id} was cleaned up; start a new one"),
        ));
    }
    if !request.session_label.is_empty() {
        session.session_label = request.session_label;
    }
    if request.reset {
        session.history_from_unix_ms = now_ms;
        session.cached.clear();
        session.updated_at_unix_ms = now_ms;
    }
    Ok(Resolved {
        session: session.clone(),
        created: false,
        reset_applied: request.reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scopes;

    fn user(name: &str) -> Caller {
        Caller {
            principal: format!("user:{name}"),
            scopes: Scopes::all(),
            sees_all: false,
        }
    }

    #[test]
    fn resolve_by_key_is_per_principal_and_ids_of_others_are_not_found() {
        let mut map = BTreeMap::new();
        let (alice, bob) = (user("alice"), user("bob"));
        let key = |k: &str| Resolve {
            session_key: k.into(),
            ..Resolve::default()
        };
        let a = resolve_in(
            &mut map,
            &alice,
            key("main"),
            1,
            "01ARZ3NDEKTSV4RRFFQ69G5FA1".into(),
        )
        .unwrap();
        assert!(a.created);
        let again = resolve_in(
            &mut map,
            &alice,
            key("main"),
            2,
            "01ARZ3NDEKTSV4RRFFQ69G5FA2".into(),
        )
        .unwrap();
        assert_eq!(
            (again.created, &again.session.session_id),
            (false, &a.session.session_id)
        );
        let b = resolve_in(
            &mut map,
            &bob,
            key("main"),
            3,
            "01ARZ3NDEKTSV4RRFFQ69G5FA3".into(),
        )
        .unwrap();
        assert!(b.created && b.session.session_id != a.session.session_id);
        let by_id = Resolve {
            session_id: Some(a.session.session_id.clone()),
            ..Resolve::default()
        };
        let stolen = resolve_in(
            &mut map,
            &bob,
            by_id.clone(),
            4,
            "01ARZ3NDEKTSV4RRFFQ69G5FA4".into(),
        );
        assert_eq!(stolen.unwrap_err().code, Code::NotFound);
        let admin = Caller::admin();
        assert!(
            !resolve_in(&mut map, &admin, by_id, 5, "x".into())
                .unwrap()
                .created
        );
        let missing = Resolve {
            session_key: "other".into(),
            require_existing: true,
            ..Resolve::default()
        };
        assert_eq!(
            resolve_in(&mut map, &alice, missing, 6, "y".into())
                .unwrap_err()
                .code,
            Code::NotFound
        );
        let reset = Resolve {
            session_key: "main".into(),
            reset: true,
            ..Resolve::default()
        };
        let r = resolve_in(&mut map, &alice, reset, 7, "z".into()).unwrap();
        assert!(r.reset_applied);
        assert_eq!(r.session.history_from_unix_ms, 7);
        assert_eq!(
            resolve_in(&mut map, &alice, key("bad key"), 8, "w".into())
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }
}
