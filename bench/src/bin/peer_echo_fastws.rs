//! Bare fastwebsockets echo server on hyper: the floor of a hyper-based
//! stack. Usage: `peer-echo-fastws [ADDR]`.

use anyhow::Result;
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, OpCode, upgrade};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn handle(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let Ok(ws) = fut.await else { return };
        let mut ws = FragmentCollector::new(ws);
        loop {
            let Ok(frame) = ws.read_frame().await else {
                break;
            };
            let echo = match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await.is_ok(),
                _ => true,
            };
            if !echo {
                break;
            }
        }
    });
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    switchyard_bench::stats::raise_nofile();
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("peer-echo-fastws listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .with_upgrades();
            let _ = conn.await;
        });
    }
}
