//! Client connections: a minimal RFC 6455 client handshake over a TCP socket
//! bound to one of several loopback source addresses, then fastwebsockets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use fastwebsockets::{Role, WebSocket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// A client WebSocket as the load tool uses it.
pub type Ws = WebSocket<Prefixed<TcpStream>>;

/// Where to connect: a parsed `ws://host:port/path?query` URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resolved server address.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// Path and query sent in the request line.
    pub path: String,
}

impl Target {
    /// Parses a `ws://` URL (no TLS).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow!("no IPv4 address for {host}"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }
}

/// Opens connections, spreading them over loopback source addresses
/// (127.0.0.1, 127.0.0.2, ...) so that more than one address's ~28k
/// ephemeral ports are available.
#[derive(Debug, Clone)]
pub struct Connector {
    sources: Vec<IpAddr>,
    headers: String,
}

impl Connector {
    /// `sources` loopback addresses starting at 127.0.0.1; `headers` are
    /// extra `Name: value` request headers.
    pub fn new(sources: u8, headers: &[String]) -> Self {
        let sources = (1..=sources.max(1))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        let mut h = String::new();
        for header in headers {
            h.push_str(header);
            h.push_str("\r\n");
        }
        Self {
            sources,
            headers: h,
        }
    }

    /// Connects connection number `index` to `target` and completes the
    /// WebSocket handshake.
    pub async fn connect(&self, target: &Target, index: usize) -> Result<Ws> {
        let source = self.sources[index % self.sources.len()];
        let socket = TcpSocket::new_v4()?;
        if target.addr.ip().is_loopback() {
            socket
                .bind(SocketAddr::new(source, 0))
                .context("bind source address")?;
        }
        let mut stream = socket.connect(target.addr).await.context("TCP connect")?;
        stream.set_nodelay(true)?;
        let key_bytes: [u8; 16] = rand::random();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            target.path, target.host, self.headers
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during handshake");
            }
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("handshake response too long");
            }
        };
        let status = buf.get(..12).unwrap_or_default();
        if !status.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..find(&buf, b"\r\n").unwrap_or(end)]);
            bail!("upgrade refused: {line}");
        }
        buf.advance(end);
        let stream = Prefixed {
            prefix: buf,
            inner: stream,
        };
        Ok(WebSocket::after_handshake(stream, Role::Client))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A stream that first yields bytes read past the handshake response.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
