//! Real `redis-server` processes for tests: each on a free loopback port, no
//! persistence, killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A reply of the RESP protocol (enough for test inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n …` (`None` = nil)
    Bulk(Option<String>),
    /// `*n …` (`None` = nil)
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Integer value (also parses a bulk string).
    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            Resp::Bulk(Some(s)) | Resp::Simple(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Text value.
    pub fn text(&self) -> Option<&str> {
        match self {
            Resp::Bulk(Some(s)) | Resp::Simple(s) => Some(s),
            _ => None,
        }
    }

    /// Array items (empty when not an array).
    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

/// Path of `redis-server` (`REDIS_SERVER` overrides).
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = PathBuf::from(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "redis-server is missing: install it (`apt-get install -y redis-server`; the README's test command does)"
    );
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
        };
        s.restart();
        s
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port, with empty data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(redis_server_binary())
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--protected-mode", "yes"])
                .args(["--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let stdout = child.stdout.take().expect("stdout");
            // Drain its log so it never blocks on a full pipe.
            std::thread::spawn(
                move || for _ in BufReader::new(stdout).lines().map_while(Result::ok) {},
            );
            let ready = Instant::now() + Duration::from_secs(5);
            while Instant::now() < ready {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken by someone else; retry below
                }
                if let Ok(Resp::Simple(p)) = self.try_cmd(&["PING"])
                    && p == "PONG"
                {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills it (SIGKILL): all data is lost, as with a restart without persistence.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs one command and returns the reply (panics when unreachable).
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.try_cmd(args).expect("redis command")
    }

    /// Runs one command over a fresh connection.
    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<Resp> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut r = BufReader::new(s);
        read_resp(&mut r)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches("\r\n").to_owned())
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP");
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}
