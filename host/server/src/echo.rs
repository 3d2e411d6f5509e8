//! `GET /echo` (diagnostics): echoes every text and binary frame through the
//! same transport machinery as sessions (limits, heartbeats, backpressure), so a
//! conformance suite such as Autobahn tests our stack.

use std::sync::Arc;

use bytes::Bytes;
use switchyard_core::backpressure::Outbox;
use switchyard_core::protocol::{CloseCode, Frame};
use switchyard_core::session::Handler;

/// Echo handler.
#[derive(Debug)]
pub struct Echo {
    outbox: Arc<Outbox>,
}

impl Echo {
    /// An echo handler with a queue of `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            outbox: Arc::new(Outbox::new(capacity)),
        }
    }
}

impl Handler for Echo {
    async fn on_text(&mut self, text: Bytes) -> Result<(), CloseCode> {
        let frame = Frame::text(text).map_err(|_| CloseCode::InvalidPayload)?;
        let _ = self.outbox.push_frame(frame);
        Ok(())
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), CloseCode> {
        let _ = self.outbox.push_frame(Frame::binary(data));
        Ok(())
    }

    fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}
