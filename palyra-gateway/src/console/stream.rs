//! `GET /console/v1/stream`: the console stream machine ([`palyra_proto::a2ui::stream`], which
//! says what the protocol is) answered by the console hub: hello against the hub's cursors and
//! snapshot, publishes handed to the hub and acknowledged once durable, records read from the
//! log's memory window or, behind it, from the log itself.

use super::{Batch, ConsoleError, ConsoleHub, Publishing, Resume};
use crate::store::Pending;
use crate::ws_app::WsApp;
use bytes::Bytes;
pub use palyra_proto::a2ui::stream::{PatchStream, Role, Start, StreamEvent, Transmit, PROTOCOL};
use palyra_proto::ws::WsConnection;
use std::sync::Arc;
use std::time::Instant;

/// One console stream connection: the machine and what it waits for from the hub.
pub struct ConsoleStream {
    hub: Arc<ConsoleHub>,
    machine: PatchStream,
    /// Publishes handed to the hub, by ticket, until durable.
    publishing: Vec<(u64, Publishing)>,
    /// Records behind the memory window, being read from the log.
    reading: Option<Pending<Result<Batch, ConsoleError>>>,
}

impl ConsoleStream {
    /// A stream accepted at `now` for `role`.
    pub fn new(hub: Arc<ConsoleHub>, role: Role, now: Instant) -> Self {
        Self {
            hub,
            machine: PatchStream::new(role, now),
            publishing: Vec::new(),
            reading: None,
        }
    }

    /// Feeds the machine what completed, then runs it until it neither sends nor asks anything.
    fn drive(&mut self, now: Instant, ws: &mut WsConnection) {
        let machine = &mut self.machine;
        self.publishing
            .retain(|(ticket, publishing)| match publishing.take() {
                Some(results) => {
                    machine.handle_published(*ticket, results);
                    false
                }
                None => true,
            });
        if let Some(result) = self.reading.as_ref().and_then(|pending| pending.take()) {
            self.reading = None;
            self.records(now, result);
        }
        loop {
            if ws.is_closed() {
                return;
            }
            self.machine.handle_backlog(ws.queued_bytes());
            let mut sent = false;
            while let Some(transmit) = self.machine.poll_transmit() {
                sent = true;
                match transmit {
                    Transmit::Text(text) => ws.send_text_shared(text),
                    Transmit::Close { code, reason } => ws.close(code, reason),
                }
            }
            if sent {
                continue; // the socket's queue changed: ask again
            }
            match self.machine.poll_event() {
                None => return,
                Some(event) => self.answer(now, event),
            }
        }
    }

    fn answer(&mut self, now: Instant, event: StreamEvent) {
        match event {
            StreamEvent::Hello { resume, sessions } => {
                let resumed = self
                    .hub
                    .resume(resume.as_ref().map(|(b, s)| (b.as_str(), *s)));
                let start = match resumed {
                    Resume::From(seq) => Start::From(seq),
                    Resume::Snapshot(reason) => {
                        let (seq, messages) = self.hub.snapshot(sessions.as_deref());
                        Start::Snapshot {
                            seq,
                            reason,
                            messages,
                        }
                    }
                };
                self.machine.welcome(self.hub.boots().clone(), start);
            }
            StreamEvent::Publish { ticket, commands } => {
                let publishing = self.hub.publish(commands);
                match publishing.take() {
                    Some(results) => self.machine.handle_published(ticket, results),
                    None => self.publishing.push((ticket, publishing)),
                }
            }
            StreamEvent::Read {
                after,
                max_records,
                max_bytes,
            } => match self.hub.read(after, max_records, max_bytes) {
                Ok(Some(batch)) => self.records(now, Ok(batch)),
                Ok(None) => {
                    // Behind the records kept in memory: read them from the log meanwhile.
                    self.reading = Some(self.hub.read_later(after, max_records, max_bytes));
                    self.machine.handle_read_later();
                }
                Err(e) => self.records(now, Err(e)),
            },
        }
    }

    fn records(&mut self, now: Instant, result: Result<Batch, ConsoleError>) {
        match result {
            Ok(batch) => {
                let hub = &self.hub;
                self.machine
                    .handle_records(now, &batch.records, batch.head, &|name| hub.surface(name));
            }
            Err(_) => self.machine.handle_read_lost(),
        }
    }
}

impl WsApp for ConsoleStream {
    fn on_text(&mut self, now: Instant, text: String, _ws: &mut WsConnection) {
        self.machine.handle_text(now, &text);
    }

    fn on_binary(&mut self, now: Instant, _data: Bytes, _ws: &mut WsConnection) {
        self.machine.handle_binary(now);
    }

    fn pump(&mut self, now: Instant, ws: &mut WsConnection) {
        if self
            .machine
            .poll_timeout()
            .is_some_and(|deadline| now >= deadline)
        {
            self.machine.handle_timeout(now);
        }
        // Woken by the notifier (records stored), the socket or a timer: the log may have grown.
        self.machine.handle_log_grown();
        self.drive(now, ws);
    }

    fn timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }
}

#[cfg(test)]
mod tests;
