//! Browser automation (`palyra-browserd`): Chromium launched with its DevTools protocol on a
//! pipe ([`chromium`]), the protocol client over it ([`cdp`]), and on top of them the sessions,
//! actions and the `palyra.browser.v1.BrowserService` served to the gateway, the CLI and runs.

pub mod actions;
pub mod cdp;
pub mod chromium;
pub mod ssrf;
pub mod tab;
