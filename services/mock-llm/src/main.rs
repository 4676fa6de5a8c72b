//! mock-llm binary: parse arguments, bind, report the port, serve until SIGINT/SIGTERM.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use axum::serve::ListenerExt as _;
use clap::Parser as _;
use mock_llm::{app, AppState, Config};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Config::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mock-llm: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("reading bound address: {e}"))?;
    let name = config.name.clone();
    let port_file = config.port_file.clone();
    let state = AppState::new(config)?;

    if let Some(path) = port_file {
        write_port_file(&path, addr.port())
            .map_err(|e| format!("writing port file {}: {e}", path.display()))?;
    }
    println!("mock-llm {name} listening on http://{addr}");
    // Harnesses read this line through a pipe, where stdout is block-buffered.
    let _ = std::io::stdout().flush();

    // Small SSE events must leave at once, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("serving: {e}"))
}

/// Written to a temporary file and renamed into place, so a harness polling for the
/// file never reads a partial number.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temp, format!("{port}\n"))?;
    std::fs::rename(&temp, path)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
