//! Real `nats-server -js` processes for tests: each on a free loopback port
//! with its own JetStream store directory, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::free_port;

/// Path of `nats-server` (`NATS_SERVER` overrides).
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/bin",
        "/usr/local/bin",
        "/usr/sbin",
    ]) {
        let p = PathBuf::from(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "nats-server is missing: install it (`apt-get install -y nats-server`; the README's test command does)"
    );
}

/// A running `nats-server` with JetStream.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its JetStream store directory (kept across [`NatsServer::restart`]).
    pub store: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory and waits
    /// until JetStream is ready.
    pub fn start() -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            store: crate::scratch_dir("nats"),
            log: Default::default(),
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and store: JetStream data survives.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(nats_server_binary())
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .arg("-js")
                .arg("-sd")
                .arg(&self.store)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn nats-server");
            let stderr = child.stderr.take().expect("stderr");
            let log = self.log.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Server is ready") {
                        let _ = tx.send(());
                    }
                    if let Ok(mut l) = log.lock()
                        && l.len() < 5000
                    {
                        l.push(line);
                    }
                }
            });
            if rx.recv_timeout(Duration::from_secs(10)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}:\n{}",
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts it again with an empty store: everything JetStream held is lost.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
        self.restart();
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it logged.
    pub fn logs(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
