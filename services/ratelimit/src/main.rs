//! ratelimit binary: parse arguments, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;
use ratelimit::server::{start, Options};

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let running = match start(options).await {
        Ok(running) => running,
        Err(message) => {
            ratelimit::log(&format!("cannot start: {message}"));
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    ratelimit::log("stopping");
    match running.stop().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            ratelimit::log(&message);
            ExitCode::FAILURE
        }
    }
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
