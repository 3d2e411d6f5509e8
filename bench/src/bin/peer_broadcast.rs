//! Bare Rust rooms broadcast server (tokio-tungstenite, 4 KiB read buffer):
//! `subscribe`/`publish` JSON commands like Switchyard's, each published
//! message encoded once and handed to every subscriber's writer task, one
//! write per message per subscriber. Usage: `peer-broadcast [ADDR]`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const QUEUE: usize = 1024;

#[derive(Deserialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    channel: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

type Rooms = Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>;

#[derive(Default)]
struct State {
    rooms: Rooms,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text)).await.is_err() {
                break;
            }
        }
    });
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(cmd) = serde_json::from_str::<Command<'_>>(&text) else {
            continue;
        };
        match cmd.kind {
            "subscribe" => {
                if let Ok(mut rooms) = state.rooms.lock() {
                    rooms
                        .entry(cmd.channel.clone())
                        .or_default()
                        .push((id, tx.clone()));
                }
                joined.push(cmd.channel.clone());
                let reply = format!(
                    r#"{{"type":"subscribed","id":{},"channel":"{}"}}"#,
                    cmd.id, cmd.channel
                );
                let _ = tx.try_send(reply.into());
            }
            "publish" => {
                let data = cmd.data.map_or("null", RawValue::get);
                let channel = serde_json::to_string(&cmd.channel).unwrap_or_default();
                // Encode once; every subscriber gets a reference-counted clone.
                let out: Utf8Bytes =
                    format!(r#"{{"type":"message","channel":{channel},"data":{data}}}"#).into();
                if let Ok(rooms) = state.rooms.lock() {
                    for (_, sub) in rooms.get(&cmd.channel).into_iter().flatten() {
                        if sub.try_send(out.clone()).is_err() {
                            state.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let _ = tx.try_send(format!(r#"{{"type":"ack","id":{}}}"#, cmd.id).into());
            }
            _ => {}
        }
    }
    if let Ok(mut rooms) = state.rooms.lock() {
        for channel in joined {
            if let Some(subs) = rooms.get_mut(&channel) {
                subs.retain(|(sub, _)| *sub != id);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9003".into());
    switchyard_bench::stats::raise_nofile();
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("peer-broadcast listening on {addr}");
    let state = Arc::new(State::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, state.clone()));
    }
}
