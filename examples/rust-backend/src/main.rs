//! A backend service on `switchyard-client`: it subscribes to a channel,
//! answers every `{"text": …}` message with a reply on the same channel, keeps
//! a reply counter in a document channel (when the tenant declares one), and
//! logs direct messages (`POST /api/send`). It rides out gateway restarts and
//! drains: the client reconnects with backoff, resumes the channel from its
//! last seq, and a reply whose ack was lost is resent with its msgId (so it is
//! published once).
//!
//! ```text
//! SWITCHYARD_URL=ws://127.0.0.1:8080/ws CHANNEL=chat:lobby cargo run
//! ```
//!
//! Environment: `SWITCHYARD_URL` (default `ws://127.0.0.1:8080/ws`),
//! `SWITCHYARD_TOKEN` (bearer token, optional), `CLIENT_ID` (default
//! `rust-backend`), `CHANNEL` (default `chat:lobby`), `STATUS_DOC` (a document
//! channel for the counter, e.g. `doc:bot`; unset = none).

use serde_json::{Value, json};
use switchyard_client::{Client, Event, LwwMap, Options};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The reply to one message, or `None` for messages not meant for the bot
/// (its own replies included: a subscriber receives its own publishes).
fn reply_to(me: &str, seq: u64, data: &Value) -> Option<Value> {
    if data.get("from").and_then(Value::as_str) == Some(me) {
        return None;
    }
    let text = data.get("text")?.as_str()?;
    Some(json!({
        "from": me,
        "inReplyTo": seq,
        "text": format!("you said: {text}"),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = env("SWITCHYARD_URL", "ws://127.0.0.1:8080/ws");
    let me = env("CLIENT_ID", "rust-backend");
    let channel = env("CHANNEL", "chat:lobby");
    let status_doc = std::env::var("STATUS_DOC").ok();

    let mut options = Options::new(&url).client_id(&me);
    if let Ok(token) = std::env::var("SWITCHYARD_TOKEN") {
        options = options.token(token);
    }
    let (client, mut events) = Client::connect(options).await?;
    let sub = client.subscribe(&channel).await?;
    println!(
        "subscribed to {channel} at seq {} (epoch {})",
        sub.seq, sub.epoch
    );
    if let Some(doc) = &status_doc {
        client.document(doc).await?;
    }
    let mut status = LwwMap::default();

    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                client.close();
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Message {
                channel: c,
                seq,
                data,
                ..
            } if c == channel => {
                let Some(reply) = reply_to(&me, seq, &data) else {
                    continue;
                };
                // Publish in the background: the event loop keeps reading.
                let client = client.clone();
                let (c, doc) = (c.clone(), status_doc.clone());
                let replies = status.get("replies").and_then(Value::as_u64).unwrap_or(0);
                tokio::spawn(async move {
                    match client.publish(&c, reply).await {
                        Ok(ack) => println!("replied to #{seq} at seq {:?}", ack.seq),
                        Err(e) => eprintln!("reply to #{seq} failed: {e}"),
                    }
                    if let Some(doc) = doc
                        && let Err(e) = client.patch(&doc, &json!({"replies": replies + 1})).await
                    {
                        eprintln!("status update failed: {e}");
                    }
                });
            }
            Event::Document(change) => {
                if let Err(e) = status.apply(&change) {
                    eprintln!("bad document frame: {e}");
                }
            }
            Event::Direct { data } => println!("direct message: {data}"),
            Event::Subscribed {
                channel,
                resumed: true,
                recovered,
                ..
            } => {
                println!(
                    "resumed {channel}: {}",
                    if recovered {
                        "nothing missed"
                    } else {
                        "history lost"
                    }
                );
            }
            Event::Connected {
                node, reconnected, ..
            } => {
                println!(
                    "{} to {node}",
                    if reconnected {
                        "reconnected"
                    } else {
                        "connected"
                    }
                );
            }
            Event::Disconnected { code, reason, .. } => println!("disconnected: {code} {reason}"),
            Event::Reconnecting { delay, reason, .. } => {
                println!("reconnecting in {delay:?} ({reason:?})")
            }
            Event::Error { error, .. } => eprintln!("error: {error}"),
            Event::Closed { error } => {
                if let Some(e) = error {
                    eprintln!("stopped: {e}");
                }
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_to_text_but_not_to_itself() {
        let r = reply_to("bot", 4, &json!({"text": "hi"})).expect("reply");
        assert_eq!(
            r,
            json!({"from": "bot", "inReplyTo": 4, "text": "you said: hi"})
        );
        assert_eq!(reply_to("bot", 5, &r), None);
        assert_eq!(reply_to("bot", 6, &json!(42)), None);
    }
}
