//! `/admin/v1/tokens`: API tokens minted, listed and revoked by the admin (already
//! authenticated). A minted token is in the answer once; only its hash is stored.

use super::admin::{store_failed, Reply};
use super::api;
use super::OperatorConnection;
use crate::access::tokens::{Mint, TokenRecord};
use http::StatusCode;
use std::time::Instant;

/// A token as the API shows it at `now_ms`.
pub fn token(record: &TokenRecord, now_ms: u64) -> api::Token {
    api::Token {
        token_id: record.token_id.clone(),
        principal: record.principal.clone(),
        scopes: record.scopes.clone(),
        label: record.label.clone(),
        state: record.state(now_ms).into(),
        created_at_unix_ms: record.created_at_unix_ms,
        expires_at_unix_ms: record.expires_at_unix_ms,
        revoked_at_unix_ms: record.revoked_at_unix_ms,
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    Reply::Json(status, serde_json::to_value(value).unwrap_or_default())
}

impl OperatorConnection {
    /// `/admin/v1/tokens...` without a body.
    pub(crate) fn tokens_route(&mut self, now: Instant, path: &str, method: &http::Method) {
        use http::Method as M;
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let Some(tokens) = admin.tokens.clone() else {
            return self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "this daemon mints no API tokens",
            );
        };
        let now_ms = (admin.clock)();
        let segments: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
        match (segments.as_slice(), method) {
            (["tokens"], &M::POST) => self.collect(
                now,
                super::admin::BodyFor::MintToken,
                super::DEFAULT_BODY_LIMIT,
            ),
            (["tokens", "usage"], &M::GET) => {
                let records = tokens.list();
                let used = admin.openai.as_ref().map(|o| o.usage()).unwrap_or_default();
                let usage = used
                    .into_iter()
                    .map(|u| {
                        let record = records.iter().find(|r| r.token_id == u.token_id);
                        api::KeyUsage {
                            principal: record.map(|r| r.principal.clone()).unwrap_or_default(),
                            label: record.map(|r| r.label.clone()).unwrap_or_default(),
                            token_id: u.token_id,
                            runs: u.runs,
                            prompt_tokens: u.prompt_tokens,
                            completion_tokens: u.completion_tokens,
                        }
                    })
                    .collect();
                let body = serde_json::to_value(api::Usage { usage }).unwrap_or_default();
                self.json(now, StatusCode::OK, body)
            }
            (["tokens"], &M::GET) => {
                let list: Vec<api::Token> =
                    tokens.list().iter().map(|t| token(t, now_ms)).collect();
                let body = serde_json::to_value(api::Tokens { tokens: list }).unwrap_or_default();
                self.json(now, StatusCode::OK, body)
            }
            (["tokens", id, "revoke"], &M::POST) => {
                let id = (*id).to_owned();
                let revoked = tokens.revoke(&id, now_ms);
                self.answer_later(
                    now,
                    Box::new(move || {
                        Some(match revoked.take()? {
                            Ok(Some(newly_revoked)) => json(
                                StatusCode::OK,
                                &api::RevokedToken {
                                    token_id: id.clone(),
                                    newly_revoked,
                                },
                            ),
                            Ok(None) => Reply::Error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                format!("no token {id}"),
                            ),
                            Err(e) => store_failed(&e),
                        })
                    }),
                );
            }
            (["tokens"], _) => self.not_allowed(now, "GET, POST"),
            (["tokens", _, "revoke"], _) => self.not_allowed(now, "POST"),
            (["tokens", "usage"], _) => self.not_allowed(now, "GET"),
            _ => self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such token route",
            ),
        }
    }

    /// `POST /admin/v1/tokens`: the body arrived.
    pub(crate) fn mint_token(&mut self, now: Instant, body: &[u8]) {
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let Some(tokens) = admin.tokens.clone() else {
            return;
        };
        let request: api::MintToken = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return self.error(
                    now,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("body: {e}"),
                )
            }
        };
        let now_ms = (admin.clock)();
        let mut secret = [0u8; 32];
        (admin.random)(&mut secret);
        let mut id_bytes = [0u8; 16];
        (admin.random)(&mut id_bytes);
        let token_id = ulid::Ulid::from_parts(now_ms, u128::from_be_bytes(id_bytes)).to_string();
        let mint = Mint {
            principal: request.principal.trim().to_owned(),
            scopes: request.scopes,
            label: request.label,
            ttl_seconds: request.ttl_seconds,
        };
        let minted = tokens.mint(mint, token_id, secret, now_ms);
        self.answer_later(
            now,
            Box::new(move || {
                Some(match minted.take()? {
                    Ok(Ok((secret, record))) => json(
                        StatusCode::CREATED,
                        &api::MintedToken {
                            token: secret,
                            record: token(&record, now_ms),
                        },
                    ),
                    Ok(Err(message)) => {
                        Reply::Error(StatusCode::BAD_REQUEST, "bad_request", message)
                    }
                    Err(e) => store_failed(&e),
                })
            }),
        );
    }
}
