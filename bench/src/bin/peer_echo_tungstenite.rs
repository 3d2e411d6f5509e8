//! Bare tokio-tungstenite echo server with a 4 KiB read buffer: the floor
//! of a tungstenite-based stack. Usage: `peer-echo-tungstenite [ADDR]`.

use anyhow::Result;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    switchyard_bench::stats::raise_nofile();
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("peer-echo-tungstenite listening on {addr}");
    let config = WebSocketConfig::default().read_buffer_size(4096);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            // Poll to the end so the close handshake completes.
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(m) if m.is_text() || m.is_binary() => {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
}
