//! Browser automation (`palyra-browserd`): Chromium launched with its DevTools protocol on a
//! pipe ([`chromium`]), the protocol client over it ([`cdp`]), and on top of them the sessions,
//! actions and the `palyra.browser.v1.BrowserService` served to the gateway, the CLI and runs.

pub mod actions;
pub mod budget;
pub mod cdp;
pub mod chromium;
pub mod downloads;
pub mod engine;
pub mod healthz;
pub mod ops;
pub mod page;
pub mod profiles;
pub mod service;
pub mod sessions;
pub mod ssrf;
pub mod tab;
