//! Protocol adapters: how a connection is set up, how it subscribes and
//! publishes, and how a delivery is recognised, for each kind of server.

use std::io::Write as _;

use anyhow::{Result, bail};
use clap::ValueEnum;
use fastwebsockets::{Frame, OpCode, Payload};

use crate::conn::Ws;

/// The application protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// Switchyard protocol v1: `welcome` on connect, `subscribe`/`publish`
    /// commands, `message` deliveries, `ack` replies.
    Switchyard,
    /// The same JSON commands without `welcome` (the bench's Node `ws` and
    /// bare Rust broadcast servers).
    Rooms,
    /// Socket.IO v4 over a raw WebSocket (Engine.IO 4): `subscribe` and
    /// `publish` events with acks, `message` events delivered to the room.
    SocketIo,
    /// No application protocol (echo servers).
    Plain,
}

impl Proto {
    /// The path and query to connect to, given the URL's own path.
    pub fn path(self, url_path: &str) -> String {
        match self {
            Proto::SocketIo if !url_path.contains("EIO=") => {
                "/socket.io/?EIO=4&transport=websocket".to_string()
            }
            _ => url_path.to_string(),
        }
    }

    /// Runs the protocol's connection setup after the WebSocket handshake.
    pub async fn setup(self, ws: &mut Ws) -> Result<()> {
        match self {
            Proto::Switchyard => {
                let text = read_text(ws).await?;
                if !contains(&text, b"\"welcome\"") {
                    bail!("expected welcome, got {}", String::from_utf8_lossy(&text));
                }
            }
            Proto::SocketIo => {
                let open = read_text(ws).await?;
                if open.first() != Some(&b'0') {
                    bail!(
                        "expected Engine.IO open, got {}",
                        String::from_utf8_lossy(&open)
                    );
                }
                send_text(ws, b"40").await?;
                loop {
                    let text = read_text(ws).await?;
                    if text.starts_with(b"40") {
                        break;
                    }
                    if text.starts_with(b"44") {
                        bail!(
                            "Socket.IO connect refused: {}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                }
            }
            Proto::Rooms | Proto::Plain => {}
        }
        Ok(())
    }

    /// Subscribes to `channel` and waits for the confirmation.
    pub async fn subscribe(self, ws: &mut Ws, channel: &str) -> Result<()> {
        let frame = match self {
            Proto::Switchyard | Proto::Rooms => {
                format!(r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#)
            }
            Proto::SocketIo => format!(r#"421["subscribe","{channel}"]"#),
            Proto::Plain => return Ok(()),
        };
        send_text(ws, frame.as_bytes()).await?;
        loop {
            let text = read_text(ws).await?;
            let ok = match self {
                Proto::SocketIo => text.starts_with(b"431"),
                _ => contains(&text, b"\"subscribed\""),
            };
            if ok {
                return Ok(());
            }
            if contains(&text, b"\"error\"") {
                bail!("subscribe refused: {}", String::from_utf8_lossy(&text));
            }
        }
    }

    /// Writes a publish command for `channel` carrying `data` (a JSON value)
    /// into `out`.
    pub fn publish_frame(self, out: &mut Vec<u8>, id: u64, channel: &str, data: &[u8]) {
        out.clear();
        let _ = match self {
            Proto::Switchyard | Proto::Rooms => write!(
                out,
                r#"{{"type":"publish","id":{id},"channel":"{channel}","data":"#
            ),
            Proto::SocketIo => write!(out, r#"42{}["publish","{channel}","#, id % 1000 + 1),
            Proto::Plain => Ok(()),
        };
        out.extend_from_slice(data);
        match self {
            Proto::Switchyard | Proto::Rooms => out.push(b'}'),
            Proto::SocketIo => out.push(b']'),
            Proto::Plain => {}
        }
    }

    /// Whether a text frame is an error reply.
    pub fn is_error(self, text: &[u8]) -> bool {
        match self {
            Proto::SocketIo => text.starts_with(b"44"),
            _ => contains(text, b"\"type\":\"error\""),
        }
    }

    /// A reply a subscriber owes the server for a text frame (Engine.IO ping).
    pub fn reply_to(self, text: &[u8]) -> Option<&'static [u8]> {
        (self == Proto::SocketIo && text == b"2").then_some(b"3".as_slice())
    }
}

/// Builds the JSON data value of a bench message: `{"t":<ns>,"p":"xx…"}`,
/// padded so the value is `size` bytes long (at least its fixed part).
pub fn data_value(out: &mut Vec<u8>, t_ns: u64, size: usize) {
    out.clear();
    let _ = write!(out, r#"{{"t":{t_ns},"p":""#);
    let fixed = out.len() + 2;
    out.resize(out.len() + size.saturating_sub(fixed), b'x');
    out.extend_from_slice(b"\"}");
}

/// Extracts the `"t":<ns>` timestamp from a delivered frame.
pub fn timestamp(text: &[u8]) -> Option<u64> {
    let start = find(text, b"\"t\":")? + 4;
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in &text[start..] {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

/// Sends one text frame from a byte slice (copied: the client masks it).
pub async fn send_text(ws: &mut Ws, text: &[u8]) -> Result<()> {
    ws.write_frame(Frame::text(Payload::Owned(text.to_vec())))
        .await?;
    Ok(())
}

/// Reads frames until a text (or binary) frame arrives and returns its payload.
pub async fn read_text(ws: &mut Ws) -> Result<Vec<u8>> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => return Ok(frame.payload.to_vec()),
            OpCode::Close => bail!("closed by server: {}", close_reason(&frame.payload)),
            _ => {}
        }
    }
}

/// Renders a close frame payload as `code reason`.
pub fn close_reason(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        format!("{code} {}", String::from_utf8_lossy(&payload[2..]))
    } else {
        "no code".to_string()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_value_has_requested_size_and_timestamp() {
        let mut out = Vec::new();
        data_value(&mut out, 123_456, 100);
        assert_eq!(out.len(), 100);
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(parsed["t"], 123_456);
        assert_eq!(timestamp(&out), Some(123_456));
    }

    #[test]
    fn timestamp_found_inside_envelopes() {
        let msg = br#"{"type":"message","channel":"c","seq":4,"data":{"t":99,"p":"x"}}"#;
        assert_eq!(timestamp(msg), Some(99));
        assert_eq!(timestamp(br#"42["message",{"t":7,"p":""}]"#), Some(7));
        assert_eq!(timestamp(br#"{"type":"ack","id":3,"seq":42}"#), None);
    }

    #[test]
    fn publish_frames_are_valid() {
        let mut data = Vec::new();
        data_value(&mut data, 5, 40);
        let mut out = Vec::new();
        Proto::Switchyard.publish_frame(&mut out, 9, "room:1", &data);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["type"], "publish");
        assert_eq!(v["data"]["t"], 5);
        Proto::SocketIo.publish_frame(&mut out, 9, "room:1", &data);
        assert!(out.starts_with(b"4210["));
        let v: serde_json::Value = serde_json::from_slice(&out[4..]).expect("valid JSON");
        assert_eq!(v[0], "publish");
    }
}
