//! A minimal HTTP/1.1 keep-alive client for the gateway's HTTP API (the
//! document scenarios build their documents with `POST /api/documents/…`).
//! Enough for JSON requests and responses: `Content-Length` or chunked
//! bodies, no TLS, no redirects.

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::conn::Target;

/// One keep-alive connection.
#[derive(Debug)]
pub struct Http {
    stream: BufReader<TcpStream>,
    host: String,
    auth: String,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, failing on a non-2xx status.
    pub fn json(&self) -> Result<serde_json::Value> {
        if !(200..300).contains(&self.status) {
            bail!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            );
        }
        serde_json::from_slice(&self.body).context("response is not JSON")
    }
}

impl Http {
    /// Connects to the target's address; `api_key` is sent as a bearer token.
    pub async fn connect(target: &Target, api_key: &str) -> Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("HTTP connect to {}", target.addr))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::with_capacity(64 * 1024, stream),
            host: target.host.clone(),
            auth: if api_key.is_empty() {
                String::new()
            } else {
                format!("Authorization: Bearer {api_key}\r\n")
            },
        })
    }

    /// Sends one request and reads the response.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        if !body.is_empty() {
            s.write_all(body).await?;
        }
        self.read_response().await
    }

    async fn read_line(&mut self, line: &mut String) -> Result<()> {
        line.clear();
        if self.stream.read_line(line).await? == 0 {
            bail!("connection closed before the response");
        }
        Ok(())
    }

    async fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        self.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            self.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse().context("bad content-length")?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                self.read_line(&mut line).await?;
                let size = line.trim_end().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
                let start = body.len();
                body.resize(start + n, 0);
                self.stream.read_exact(&mut body[start..]).await?;
                self.read_line(&mut line).await?; // CRLF after the chunk
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok(Response { status, body })
    }
}
