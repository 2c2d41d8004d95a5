//! An application on an upgraded WebSocket connection (the console stream, the echo endpoint):
//! the operator connection runs the WebSocket machine and hands the app its messages.

use bytes::Bytes;
use palyra_proto::ws::WsConnection;
use std::time::Instant;

/// The application side of an upgraded WebSocket connection.
pub trait WsApp: Send {
    /// A text message arrived.
    fn on_text(&mut self, now: Instant, text: String, ws: &mut WsConnection);
    /// A binary message arrived.
    fn on_binary(&mut self, now: Instant, data: Bytes, ws: &mut WsConnection);
    /// Called after input, on wake-ups, on timers and when the output queue drained: the app
    /// may send what it has.
    fn pump(&mut self, _now: Instant, _ws: &mut WsConnection) {}
    /// The app's next timer.
    fn timeout(&self) -> Option<Instant> {
        None
    }
}
