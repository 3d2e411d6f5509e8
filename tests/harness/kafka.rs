//! Real Kafka-compatible brokers for tests: `tansu` (built once by the
//! README's test command into `target/test-brokers/bin`), each on a free loopback
//! port with its own SQLite store (kept across [`KafkaServer::restart`]),
//! killed on drop. Topics are created with tansu's own CLI.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::free_port;

/// Path of `tansu` (`TANSU` overrides).
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        return PathBuf::from(p);
    }
    let p = crate::target_dir()
        .join("test-brokers")
        .join("bin")
        .join("tansu");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-brokers.sh (the README's test command does)",
        p.display()
    );
    p
}

/// A running tansu broker.
pub struct KafkaServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (the SQLite store and its log live here).
    pub dir: PathBuf,
}

impl KafkaServer {
    /// Starts a broker on a free port with a fresh store.
    pub fn start() -> KafkaServer {
        let mut s = KafkaServer {
            child: None,
            port: free_port(),
            dir: crate::scratch_dir("kafka"),
        };
        s.restart();
        s
    }

    /// `127.0.0.1:<port>` (bootstrap servers).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and store: topics, records and
    /// committed offsets survive.
    pub fn restart(&mut self) {
        self.kill();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::File::create(self.dir.join("tansu.log")).expect("log file");
            let mut child = Command::new(tansu_binary())
                .arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn tansu");
            let up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < up {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {}:\n{}",
                self.port,
                self.logs()
            );
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu_binary())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "creating topic {topic}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
