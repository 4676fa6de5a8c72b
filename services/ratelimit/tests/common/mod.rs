//! Helpers shared by the integration tests: configuration files, a gRPC client, a
//! minimal HTTP GET, and a private redis-server.
// Test support: failing loudly is the point here.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ratelimit::messages::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use ratelimit::proto::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

pub const SEED: &str = include_str!("../../../../examples/ratelimit/ai-gateway.yaml");

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

pub async fn client(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub fn user_request(user: &str, tier: Option<&str>) -> RateLimitRequest {
    let mut descriptors = vec![RateLimitDescriptor::from_entries([("user_id", user)])];
    if let Some(tier) = tier {
        descriptors.push(RateLimitDescriptor::from_entries([
            ("user_id", user),
            ("model_tier", tier),
        ]));
    }
    RateLimitRequest {
        domain: "ai-gateway".into(),
        descriptors,
        hits_addend: 0,
    }
}

pub async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    request: &RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request.clone())
        .await
        .unwrap()
        .into_inner()
}

/// GET over HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server of our own on a free port, without persistence; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// None (with a message saying why) when redis-server is not installed.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "SKIPPED: redis-server is not installed (Debian: apt-get install redis-server; `make deps` does it)"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, port };
        wait_for("redis-server", Duration::from_secs(10), || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.write_all(b"PING\r\n").ok()?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).ok()?;
            (&reply == b"+PONG\r\n").then_some(())
        });
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `ratelimit` binary as a child process on ephemeral ports; killed on drop.
pub struct Replica {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Replica {
    pub fn start(dir: &Path, name: &str, config: &Path, extra: &[&str]) -> Replica {
        let grpc_file = dir.join(format!("{name}.grpc-port"));
        let http_file = dir.join(format!("{name}.http-port"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ratelimit"))
            .arg("--config")
            .arg(config)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--port-file")
            .arg(&grpc_file)
            .arg("--http-port-file")
            .arg(&http_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let read = |path: &Path| -> Option<u16> {
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let grpc = wait_for("gRPC port file", Duration::from_secs(20), || {
            read(&grpc_file)
        });
        let http = wait_for("HTTP port file", Duration::from_secs(20), || {
            read(&http_file)
        });
        Replica {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
