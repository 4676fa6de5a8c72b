//! Wiring: load the configuration, pick the backend, bind the gRPC and HTTP listeners,
//! and run the servers plus the reload and sweep tasks until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigSource, RateLimitConfig};
use crate::limiter::{Clock, Limiter, MemoryLimiter, RedisLimiter, SystemClock};
use crate::metrics::Metrics;
use crate::proto::rate_limit_service_server::RateLimitServiceServer;
use crate::reload::Reloader;
use crate::service::{GrpcService, RateLimitService, Settings};

/// Command-line options of the `ratelimit` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ratelimit",
    about = "Envoy global rate-limit service (envoy.service.ratelimit.v3), reading envoyproxy/ratelimit's configuration format"
)]
pub struct Options {
    /// Configuration: one YAML file, or a directory of *.yaml / *.yml files (one domain each).
    #[arg(long)]
    pub config: PathBuf,
    /// gRPC listen address (ShouldRateLimit); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub grpc_listen: SocketAddr,
    /// HTTP listen address for /healthcheck and /metrics (Prometheus text).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Redis URL (redis://host:port/db) for counters shared by replicas; in memory without it.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Write the bound gRPC port here (atomically), once listening.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// Write the bound HTTP port here (atomically), once listening.
    #[arg(long)]
    pub http_port_file: Option<PathBuf>,
    /// Prefix of every counter key (envoyproxy/ratelimit's CACHE_KEY_PREFIX).
    #[arg(long, default_value = "")]
    pub cache_key_prefix: String,
    /// Global shadow mode: count everything, answer OK (envoyproxy/ratelimit's SHADOW_MODE).
    #[arg(long)]
    pub shadow_mode: bool,
    /// Share of a limit above which hits count as near_limit.
    #[arg(long, default_value_t = 0.8)]
    pub near_limit_ratio: f32,
    /// How often the configuration files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reload_interval_ms: u64,
    /// Redis connect and response timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub redis_timeout_ms: u64,
}

impl Options {
    /// Defaults for a configuration file, on ephemeral loopback ports (tests).
    pub fn ephemeral(config: impl Into<PathBuf>) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Options {
            config: config.into(),
            grpc_listen: any,
            http_listen: any,
            redis_url: None,
            port_file: None,
            http_port_file: None,
            cache_key_prefix: String::new(),
            shadow_mode: false,
            near_limit_ratio: 0.8,
            reload_interval_ms: 1000,
            redis_timeout_ms: 1000,
        }
    }
}

/// A started service.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub service: Arc<RateLimitService>,
    shutdown: watch::Sender<bool>,
    healthy: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
}

impl Running {
    /// Stops accepting, lets calls in flight finish, and waits for every task.
    pub async fn stop(self) -> Result<(), String> {
        self.healthy.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(format!("task failed: {e}")),
            }
        }
        result
    }
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Loads the configuration (refusing to start on a bad one), connects the backend, binds
/// both listeners, writes the port files and spawns everything.
pub async fn start(options: Options) -> Result<Running, String> {
    let metrics = Arc::new(Metrics::default());
    let source = ConfigSource::new(&options.config);
    let sources = source.read().map_err(|e| e.0)?;
    let config = RateLimitConfig::from_sources(&sources, &metrics).map_err(|e| e.0)?;
    metrics.config_load_success.fetch_add(1, Ordering::Relaxed);
    let domains = config.domain_names().join(", ");

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limiter: Arc<dyn Limiter> = match &options.redis_url {
        Some(url) => Arc::new(
            RedisLimiter::connect(url, Duration::from_millis(options.redis_timeout_ms))
                .await
                .map_err(|e| e.0)?,
        ),
        None => {
            let memory = Arc::new(MemoryLimiter::default());
            tasks.push(tokio::spawn(sweep(
                memory.clone(),
                clock.clone(),
                shutdown_rx.clone(),
            )));
            memory
        }
    };
    let backend = limiter.name();
    let service = Arc::new(RateLimitService::new(
        config,
        limiter,
        clock,
        metrics.clone(),
        Settings {
            cache_key_prefix: options.cache_key_prefix.clone(),
            global_shadow_mode: options.shadow_mode,
            near_limit_ratio: options.near_limit_ratio,
        },
    ));

    let grpc_listener = tokio::net::TcpListener::bind(options.grpc_listen)
        .await
        .map_err(|e| format!("binding gRPC {}: {e}", options.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(options.http_listen)
        .await
        .map_err(|e| format!("binding HTTP {}: {e}", options.http_listen))?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;

    let grpc = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(GrpcService(service.clone())))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(shutdown_rx.clone()),
        );
    tasks.push(tokio::spawn(async move {
        grpc.await.map_err(|e| format!("gRPC server: {e}"))
    }));

    let healthy = Arc::new(AtomicBool::new(true));
    let http = axum::serve(
        http_listener,
        Router::new()
            .route("/healthcheck", get(healthcheck))
            .route("/metrics", get(prometheus))
            .with_state(HttpState {
                metrics,
                healthy: healthy.clone(),
            }),
    )
    .with_graceful_shutdown(stopped(shutdown_rx.clone()));
    tasks.push(tokio::spawn(async move {
        http.await.map_err(|e| format!("HTTP server: {e}"))
    }));

    let reloader = Reloader::new(source, &sources);
    tasks.push(tokio::spawn(reload(
        reloader,
        service.clone(),
        Duration::from_millis(options.reload_interval_ms.max(10)),
        shutdown_rx,
    )));

    for (path, port) in [
        (&options.port_file, grpc_addr.port()),
        (&options.http_port_file, http_addr.port()),
    ] {
        if let Some(path) = path {
            write_port_file(path, port)
                .map_err(|e| format!("writing port file {}: {e}", path.display()))?;
        }
    }
    crate::log(&format!(
        "serving gRPC on {grpc_addr}, HTTP on {http_addr}; backend {backend}; domains [{domains}]"
    ));
    Ok(Running {
        grpc_addr,
        http_addr,
        service,
        shutdown,
        healthy,
        tasks,
    })
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
}

async fn healthcheck(State(state): State<HttpState>) -> impl IntoResponse {
    if state.healthy.load(Ordering::SeqCst) {
        (StatusCode::OK, "OK\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn prometheus(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn reload(
    mut reloader: Reloader,
    service: Arc<RateLimitService>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        // Reading and compiling a configuration is quick but blocking file I/O.
        let service = service.clone();
        reloader = tokio::task::spawn_blocking(move || {
            reloader.check(&service);
            reloader
        })
        .await
        .map_err(|e| format!("reload task: {e}"))?;
    }
}

/// Forgets finished windows every ten seconds.
async fn sweep(
    memory: Arc<MemoryLimiter>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        memory.sweep(clock.now());
    }
}

/// Written to a temporary file and renamed into place, so a harness polling for the
/// file never reads a partial number.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temp, format!("{port}\n"))?;
    std::fs::rename(&temp, path)
}
