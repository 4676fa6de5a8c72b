//! The real binary: ephemeral port reported through --port-file, traffic over TCP, a cut
//! stream as a client sees it on the wire, and shutdown on SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str) -> (Server, String) {
    let dir = std::env::temp_dir().join(format!("mock-llm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-llm"))
        .args(["--name", name, "--port-file"])
        .arg(&port_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            assert!(text.ends_with('\n'), "{text:?}");
            break text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no port file");
        std::thread::sleep(Duration::from_millis(20));
    };
    (Server { child, port, dir }, banner)
}

/// One HTTP/1.1 exchange on a fresh connection; returns everything read until the
/// server closed it.
fn exchange(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8(response).unwrap()
}

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn serves_on_the_reported_port_and_stops_on_sigterm() {
    let (mut server, banner) = start("cli-a");
    assert_eq!(
        banner,
        format!(
            "mock-llm cli-a listening on http://127.0.0.1:{}\n",
            server.port
        )
    );

    let health = exchange(
        server.port,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.contains("x-mock-backend: cli-a\r\n"));
    assert!(health.ends_with("\r\n\r\nok"));

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let chat = exchange(server.port, &post("/v1/chat/completions", "", body));
    assert!(chat.starts_with("HTTP/1.1 200 OK\r\n"), "{chat}");
    assert!(chat.contains("\"completion_tokens\":16"));

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cut_stream_drops_the_connection_mid_body() {
    let (server, _) = start("cli-b");
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let whole = exchange(server.port, &post("/v1/chat/completions", "", body));
    assert!(whole.ends_with("data: [DONE]\n\n"), "{whole}");

    let cut = exchange(
        server.port,
        &post(
            "/v1/chat/completions",
            "x-mock-cut-stream-after: 2\r\n",
            body,
        ),
    );
    assert!(cut.starts_with("HTTP/1.1 200 OK\r\n"), "{cut}");
    assert!(cut.contains("transfer-encoding: chunked\r\n"), "{cut}");
    assert_eq!(
        cut.matches("\"content\":").count(),
        1 + 2,
        "role chunk and two content chunks: {cut}"
    );
    assert!(!cut.contains("[DONE]") && !cut.contains("finish_reason\":\"stop"));
    assert!(
        !cut.ends_with("\r\n0\r\n\r\n"),
        "no terminating chunk: {cut:?}"
    );
}
