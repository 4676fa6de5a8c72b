//! `tollgate`: one configuration file → Envoy bootstrap and a local gateway.
//!
//! - `tollgate render` prints the Envoy bootstrap for a configuration;
//! - `tollgate run` starts the mock backends and Envoy with the filters.

// The CLI builds and reads JSON documents with `serde_json::Value` indexing,
// which yields `Null` for a missing key or index instead of panicking.
#![allow(clippy::indexing_slicing)]

mod bootstrap;
mod config;
mod run;
mod telemetry;

use anyhow::Result;
use bootstrap::Filter;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Tollgate AI gateway: render and run the local gateway")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(clap::Args)]
struct Common {
    /// The gateway configuration file.
    #[arg(long, default_value = "examples/tollgate.yaml")]
    config: PathBuf,
    /// Filters to install: `all`, `none`, or a list such as `router,meter`.
    /// Default: those with an entry under `filters:` in the configuration.
    #[arg(long)]
    filters: Option<String>,
    /// Directory of the built filter modules.
    #[arg(long, default_value = "target/wasm32-wasip1/release")]
    wasm_dir: PathBuf,
}

#[derive(Subcommand)]
enum Commands {
    /// Print the Envoy bootstrap (JSON) for a configuration.
    Render {
        #[command(flatten)]
        common: Common,
    },
    /// Start the mock backends and Envoy; Ctrl-C stops them all.
    Run {
        #[command(flatten)]
        common: Common,
        /// Envoy binary (default: $ENVOY_BIN, else the project's pinned .venv/bin/envoy).
        #[arg(long)]
        envoy: Option<PathBuf>,
        #[arg(long, default_value = "target/native/mock-llm")]
        mock_bin: PathBuf,
        /// The rate-limit service started for the guard (`ratelimit:` section).
        #[arg(long, default_value = "target/native/ratelimit")]
        ratelimit_bin: PathBuf,
        /// Where bootstrap, port files and logs go.
        #[arg(long, default_value = ".run")]
        run_dir: PathBuf,
        /// Use kernel-assigned ports for the listener, admin and mocks.
        #[arg(long)]
        ephemeral: bool,
        /// Write the URLs, pids and log paths here (JSON) once ready.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Envoy worker threads.
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
        /// Do not print the welcome banner.
        #[arg(long)]
        quiet: bool,
        /// Envoy's log level (trace, debug, info, warn, error).
        #[arg(long, default_value = "warn")]
        envoy_log_level: String,
    },
}

fn filters(common: &Common, config: &config::GatewayConfig) -> Result<Vec<Filter>> {
    let configured = [
        (Filter::Router, config.filters.router.is_some()),
        (Filter::Meter, config.filters.meter.is_some()),
        (Filter::Guard, config.filters.guard.is_some()),
    ];
    let mut chosen = match common.filters.as_deref() {
        None => configured.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect(),
        Some("all") => Filter::ALL.to_vec(),
        Some("none") | Some("") => Vec::new(),
        Some(list) => list.split(',').map(|name| Filter::parse(name.trim())).collect::<Result<Vec<_>>>()?,
    };
    // Chain order is fixed (router, meter, guard) whatever order was asked.
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Commands::Render { common } => {
            let config = config::GatewayConfig::load(&common.config)?;
            let listen = config.listen.clone();
            let admin = config.admin.clone();
            let bootstrap = bootstrap::render(
                &config,
                &bootstrap::RenderOptions {
                    wasm_dir: &common.wasm_dir,
                    filters: &filters(&common, &config)?,
                    listen: &listen,
                    admin: &admin,
                    backend_ports: &BTreeMap::new(),
                    ratelimit_port: None,
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&bootstrap)?);
            Ok(())
        }
        Commands::Run { common, envoy, mock_bin, ratelimit_bin, run_dir, ephemeral, state_file, concurrency, quiet, envoy_log_level } => {
            let config = config::GatewayConfig::load(&common.config)?;
            let envoy_bin = envoy
                .or_else(|| std::env::var_os("ENVOY_BIN").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(".venv/bin/envoy"));
            run::run(&run::RunOptions {
                filters: filters(&common, &config)?,
                config_path: common.config,
                wasm_dir: common.wasm_dir,
                envoy_bin,
                mock_bin,
                ratelimit_bin,
                run_dir,
                ephemeral,
                state_file,
                concurrency,
                quiet,
                envoy_log_level,
            })
        }
    }
}
