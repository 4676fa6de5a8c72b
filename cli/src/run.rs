//! `tollgate run`: starts the mock backends, renders the bootstrap for the
//! ports they got, starts Envoy, waits until it is ready, and stops every
//! process it started when it is interrupted or one of them dies.

use crate::bootstrap::{self, Filter, RenderOptions};
use crate::config::{Endpoint, GatewayConfig};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RunOptions {
    pub config_path: PathBuf,
    pub filters: Vec<Filter>,
    pub wasm_dir: PathBuf,
    pub envoy_bin: PathBuf,
    pub mock_bin: PathBuf,
    /// The rate-limit service, started when the guard calls one.
    pub ratelimit_bin: PathBuf,
    pub run_dir: PathBuf,
    /// Put the listener, admin and mocks on ports the kernel picks (tests).
    pub ephemeral: bool,
    pub state_file: Option<PathBuf>,
    pub concurrency: u32,
    pub quiet: bool,
    /// Envoy's log level (its log goes to `<run_dir>/envoy.log`).
    pub envoy_log_level: String,
}

struct Process {
    name: String,
    child: Child,
}

/// Children die with us even if we are killed outright, so a crashed test
/// never leaves an Envoy holding a port.
fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Process> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
    Ok(Process { name: name.to_string(), child })
}

fn wait_for_file(path: &Path, process: &mut Process, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        // Both writers (mock-llm: atomically; Envoy: one short write) leave
        // either nothing or the whole address.
        if let Ok(text) = fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        if let Some(status) = process.child.try_wait()? {
            bail!("{} exited ({status}) before it was ready", process.name);
        }
        if Instant::now() > deadline {
            bail!("{} did not write {} within {timeout:?}", process.name, path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET on the admin endpoint: status and body (any status is an answer).
fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(format!("http://{address}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

fn wait_until_ready(admin: &str, envoy: &mut Process, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(admin, "/ready") {
            return Ok(());
        }
        if let Some(status) = envoy.child.try_wait()? {
            bail!("envoy exited ({status}) during start-up");
        }
        if Instant::now() > deadline {
            bail!("envoy was not ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits, up to `timeout`, until every actively health-checked endpoint has
/// passed a check, and returns those that have not. Envoy runs the first
/// checks while its main thread loads the wasm modules; one that times out
/// then leaves its endpoint out until it is checked again, and requests go
/// down the fallback chain meanwhile.
fn wait_until_healthy(admin: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let failing: Vec<String> = match http_get(admin, "/clusters") {
            Ok((200, body)) => body
                .lines()
                .filter(|line| line.contains("::health_flags::") && line.contains("failed_active_hc"))
                .filter_map(|line| line.split("::health_flags::").next().map(|host| host.replace("::", " ")))
                .collect(),
            _ => vec!["(the admin interface did not answer)".to_string()],
        };
        if failing.is_empty() || Instant::now() > deadline {
            return failing;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listener_port(admin: &str) -> Result<u16> {
    let (_, body) = http_get(admin, "/listeners?format=json")?;
    let listeners: serde_json::Value = serde_json::from_str(&body).context("parsing /listeners")?;
    listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("no listener port in /listeners")
}

fn with_port(address: &str, port: u16) -> String {
    match address.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{address}:{port}"),
    }
}

pub fn run(options: &RunOptions) -> Result<()> {
    let config = GatewayConfig::load(&options.config_path)?;
    fs::create_dir_all(&options.run_dir)?;
    let run_dir = options.run_dir.canonicalize()?;
    for required in [&options.envoy_bin, &options.mock_bin] {
        if !required.exists() && required.components().count() > 1 {
            bail!("{} not found: run `make build` (or `make envoy`) first", required.display());
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the signal handler")?;

    let mut processes: Vec<Process> = Vec::new();
    let result = start_and_wait(&config, options, &run_dir, &stop, &mut processes);
    shut_down(&mut processes);
    result
}

fn start_and_wait(
    config: &GatewayConfig,
    options: &RunOptions,
    run_dir: &Path,
    stop: &AtomicBool,
    processes: &mut Vec<Process>,
) -> Result<()> {
    let mut backend_ports = BTreeMap::new();
    let mut backend_urls = BTreeMap::new();
    for backend in config.backends.iter().filter(|b| b.mock) {
        let endpoint = Endpoint::parse(&backend.url)?;
        let port = if options.ephemeral { 0 } else { endpoint.port };
        let port_file = run_dir.join(format!("{}.port", backend.name));
        let _ = fs::remove_file(&port_file);
        let mut command = Command::new(&options.mock_bin);
        command
            .args(["--name", &backend.name, "--listen"])
            .arg(format!("{}:{port}", endpoint.host))
            .arg("--port-file")
            .arg(&port_file)
            .args(&backend.mock_args);
        let mut process = spawn(&backend.name, &mut command, &run_dir.join(format!("{}.log", backend.name)))?;
        let actual = wait_for_file(&port_file, &mut process, Duration::from_secs(10));
        processes.push(process);
        let actual: u16 = actual?.parse().context("mock wrote a bad port")?;
        backend_ports.insert(backend.name.clone(), actual);
        backend_urls.insert(backend.name.clone(), format!("http://{}:{actual}", endpoint.host));
    }

    let ratelimit = start_ratelimit(config, options, run_dir, processes)?;

    let (listen, admin) = if options.ephemeral {
        (with_port(&config.listen, 0), with_port(&config.admin, 0))
    } else {
        (config.listen.clone(), config.admin.clone())
    };
    let wasm_dir = options.wasm_dir.canonicalize().with_context(|| format!("{} (build the filters first)", options.wasm_dir.display()))?;
    let bootstrap = bootstrap::render(
        config,
        &RenderOptions {
            wasm_dir: &wasm_dir,
            filters: &options.filters,
            listen: &listen,
            admin: &admin,
            backend_ports: &backend_ports,
            ratelimit_port: ratelimit.as_ref().map(|r| r.port),
        },
    )?;
    let bootstrap_path = run_dir.join("envoy.json");
    fs::write(&bootstrap_path, serde_json::to_string_pretty(&bootstrap)?)?;

    let admin_path = run_dir.join("admin.address");
    let _ = fs::remove_file(&admin_path);
    let mut command = Command::new(&options.envoy_bin);
    // Keys kept in files reach the router's VM through Envoy's environment
    // (host_env_keys), never through a config file or the command line.
    for backend in &config.backends {
        if let (Some(path), Some(variable)) = (&backend.api_key_file, backend.key_variable()) {
            let key = fs::read_to_string(path).with_context(|| format!("backends.{}.api_key_file", backend.name))?;
            command.env(variable, key.trim());
        }
    }
    command
        .arg("-c")
        .arg(&bootstrap_path)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--concurrency", &options.concurrency.to_string()])
        // Several gateways (tests, benchmarks) may run side by side.
        .arg("--disable-hot-restart")
        // Access-log lines (the meter's per-request record) show up within
        // a fraction of a second instead of Envoy's default 10 s.
        .args(["--file-flush-interval-msec", "250"])
        .args(["--log-level", &options.envoy_log_level, "--log-path"])
        .arg(run_dir.join("envoy.log"));
    let mut envoy = spawn("envoy", &mut command, &run_dir.join("access.log"))?;
    let admin_address = wait_for_file(&admin_path, &mut envoy, Duration::from_secs(30));
    let admin_address = match admin_address {
        Ok(address) => address,
        Err(e) => {
            processes.push(envoy);
            return Err(e.context(format!("see {}", run_dir.join("envoy.log").display())));
        }
    };
    let ready = wait_until_ready(&admin_address, &mut envoy, Duration::from_secs(60));
    let envoy_pid = envoy.child.id();
    processes.push(envoy);
    ready.with_context(|| format!("see {}", run_dir.join("envoy.log").display()))?;
    let recheck = Duration::from_secs(config.health_check.unhealthy_interval_seconds);
    let failing = wait_until_healthy(&admin_address, recheck + Duration::from_secs(5));
    if !failing.is_empty() {
        eprintln!("tollgate: endpoints failing their health check (requests go down the fallback chain): {}", failing.join(", "));
    }
    let port = listener_port(&admin_address)?;
    let gateway_url = format!("http://{}", with_port(&listen, port));
    let admin_url = format!("http://{admin_address}");

    let state = json!({
        "gateway_url": gateway_url,
        "admin_url": admin_url,
        "backends": backend_urls,
        "envoy_pid": envoy_pid,
        "pids": processes.iter().map(|p| (p.name.clone(), p.child.id())).collect::<BTreeMap<_, _>>(),
        "run_dir": run_dir,
        "envoy_log": run_dir.join("envoy.log"),
        "access_log": run_dir.join("access.log"),
        "filters": options.filters.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "ratelimit": ratelimit.as_ref().map(|r| json!({
            "grpc": format!("{}:{}", r.host, r.port),
            "http_url": r.http_port.map(|p| format!("http://{}:{p}", r.host)),
        })),
    });
    if let Some(path) = &options.state_file {
        // Written last and atomically: its presence means "ready".
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&state)?)?;
        fs::rename(&tmp, path)?;
    }
    if !options.quiet {
        print_banner(&gateway_url, &admin_url, &backend_urls, options, run_dir);
        if let Some(r) = &ratelimit {
            println!("  ratelimit  grpc {}:{}  (metrics: http://{}:{}/metrics)", r.host, r.port, r.host, r.http_port.unwrap_or(0));
            println!("  The guard limits each caller (API key, else x-user-id) as examples/ratelimit and filters.guard say:");
            println!("    curl -si {gateway_url}/v1/chat/completions -H 'content-type: application/json' -H 'x-user-id: me' \\");
            println!("      -d '{{\"model\":\"llama-70b\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}' | grep -i x-ratelimit");
            println!();
        }
    }

    while !stop.load(Ordering::SeqCst) {
        for process in processes.iter_mut() {
            if let Some(status) = process.child.try_wait()? {
                bail!("{} exited unexpectedly ({status}); logs in {}", process.name, run_dir.display());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The rate-limit service as started.
struct RateLimitStarted {
    host: String,
    port: u16,
    http_port: Option<u16>,
}

/// Starts `target/native/ratelimit` when the guard is installed and calls a
/// service that `ratelimit:` does not say is already running.
fn start_ratelimit(
    config: &GatewayConfig,
    options: &RunOptions,
    run_dir: &Path,
    processes: &mut Vec<Process>,
) -> Result<Option<RateLimitStarted>> {
    if !options.filters.contains(&Filter::Guard) || config.guard_cluster()?.is_none() {
        return Ok(None);
    }
    let Some(service) = &config.ratelimit else { return Ok(None) };
    if service.address.is_some() {
        return Ok(None);
    }
    let Some(rules) = &service.config else { bail!("ratelimit: needs `config`") };
    if !options.ratelimit_bin.exists() {
        bail!("{} not found: run `make build` first", options.ratelimit_bin.display());
    }
    let (host, _) = service.listen.rsplit_once(':').with_context(|| format!("ratelimit.listen: `{}` is not host:port", service.listen))?;
    let (grpc, http) = if options.ephemeral {
        (with_port(&service.listen, 0), with_port(&service.http_listen, 0))
    } else {
        (service.listen.clone(), service.http_listen.clone())
    };
    let port_file = run_dir.join("ratelimit.port");
    let http_port_file = run_dir.join("ratelimit.http-port");
    for file in [&port_file, &http_port_file] {
        let _ = fs::remove_file(file);
    }
    let mut command = Command::new(&options.ratelimit_bin);
    command
        .arg("--config")
        .arg(rules)
        .args(["--grpc-listen", &grpc, "--http-listen", &http])
        .arg("--port-file")
        .arg(&port_file)
        .arg("--http-port-file")
        .arg(&http_port_file);
    if let Some(url) = &service.redis_url {
        command.args(["--redis-url", url]);
    }
    let mut process = spawn("ratelimit", &mut command, &run_dir.join("ratelimit.log"))?;
    let port = wait_for_file(&port_file, &mut process, Duration::from_secs(10));
    let http_port = wait_for_file(&http_port_file, &mut process, Duration::from_secs(10));
    processes.push(process);
    let port: u16 = port?.parse().context("the rate-limit service wrote a bad port")?;
    let http_port = http_port.ok().and_then(|p| p.parse().ok());
    Ok(Some(RateLimitStarted { host: host.to_string(), port, http_port }))
}

fn shut_down(processes: &mut [Process]) {
    for process in processes.iter() {
        if let Ok(pid) = i32::try_from(process.child.id()) {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for process in processes.iter_mut() {
        while matches!(process.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = process.child.kill();
        let _ = process.child.wait();
    }
}

fn print_banner(gateway: &str, admin: &str, backends: &BTreeMap<String, String>, options: &RunOptions, run_dir: &Path) {
    let filters: Vec<_> = options.filters.iter().map(|f| f.name()).collect();
    println!("Tollgate is up.");
    println!("  gateway  {gateway}   (filters: {})", if filters.is_empty() { "none".to_string() } else { filters.join(", ") });
    println!("  admin    {admin}   (stats: {admin}/stats/prometheus)");
    for (name, url) in backends {
        println!("  mock     {name:<10} {url}");
    }
    println!("  logs     {}", run_dir.display());
    println!();
    println!("Try it:");
    println!("  curl -s {gateway}/v1/chat/completions -H 'content-type: application/json' -H 'x-model-tier: fast' \\");
    println!("    -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'");
    println!();
    println!("  .venv/bin/python -c \"from openai import OpenAI; c = OpenAI(base_url='{gateway}/v1', api_key='sk-local'); \\");
    println!("    print(c.chat.completions.create(model='llama-70b', messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)\"");
    println!();
    println!("Ctrl-C stops everything.");
}
