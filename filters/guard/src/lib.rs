//! Guard logic: who is calling, request limits and token/dollar budgets at
//! admission, over Envoy's global rate-limit API (`ShouldRateLimit`, gRPC, to
//! the cluster of a rate-limit service such as `services/ratelimit`).
//!
//! # One request
//!
//! 1. **Identity** (request headers): a configured virtual key (SHA-256 of
//!    `Authorization: Bearer …` or `x-api-key`) names user, team and key id;
//!    without one, the identity headers an authentication filter in front
//!    sets (`x-user-id`, `x-tollgate-team`). Keys required and missing or
//!    unknown → 401. A key's team is written to the team header (and the
//!    `tollgate.team` property) for the meter; a configured key's header is
//!    removed before the request goes upstream.
//! 2. **Admission** (request body, or headers when there is no body or no
//!    budget): one `ShouldRateLimit` with
//!    - a descriptor per configured request limit (user, user + tier, team,
//!      model, key…), one hit each; their limits are the service's;
//!    - per applicable budget, its two ledger counters (see below): read
//!      `released` (hits 0), charge `reserved` with the request's estimate.
//!
//!    Over a request limit, or a budget the estimate does not fit → 429 with
//!    an OpenAI-style body, `retry-after` and `x-ratelimit-*` headers (the
//!    refused reservations are released first). Otherwise the request goes on
//!    and its response gets the same headers. The service failing or late
//!    (timeout) → fail open or closed as configured, counted in a stat.
//! 3. **Settlement** (end of the response): the guard reads the response's
//!    usage itself, and sends the difference to the reservation: the excess to
//!    `reserved`, the unused part to `released`; it holds the last chunk until
//!    the service has answered, so the call is never cancelled with the stream.
//!
//! # Budgets as ledgers
//!
//! `hits_addend` is unsigned: a counter can only grow. So each budget (per
//! window and scope value) is two counters, both sent with a limit override
//! of `u32::MAX` so that `limit_remaining` gives their value: `reserved` (all
//! reservations, plus charges beyond them) and `released` (reserved but
//! unused, or refused). The budget's use is `reserved − released`: exactly
//! the settled spend plus the reservations of requests still in flight. The
//! guard admits a request when `used_before + estimate ≤ budget`, where
//! `used_before` comes from one atomic call that also adds the estimate to
//! `reserved` (`released` is listed first, so even a backend that is not
//! atomic across counters can only over-count).
//!
//! The estimate is the prompt (the meter's tiktoken count,
//! `tollgate.prompt_tokens`, else a quarter of the body's bytes) plus `max_tokens`
//! (else `default_completion_tokens`), priced with the configured table for
//! dollar budgets (rounded up to the budget's count).
//!
//! # The overshoot bound
//!
//! Let `B` be a budget in one window, and for each admitted request `i`, `r_i`
//! its reservation and `a_i` what it used. Every admission saw all earlier
//! reservations and settlements, so at the window's last admission
//! `Σ settled a + Σ unsettled r ≤ B`. Hence the window's spend is
//!
//! ```text
//! Σ a_i ≤ B + Σ_{i in flight at the last admission} max(a_i − r_i, 0)
//!       ≤ B + (requests in flight) × (largest excess of use over reservation).
//! ```
//!
//! With `max_tokens` set, a provider never returns more completion tokens
//! than reserved, so the excess is only the prompt's miscount (0 when the
//! meter's tokenizer matches the provider's); without it, the completion
//! beyond `default_completion_tokens`. Settlements that fail (service down),
//! or land within `settle_margin_seconds` of the window's end, are dropped
//! (counted): a dropped release only over-counts; a dropped excess adds to
//! the bound. A request admitted while the service failed open is charged
//! its whole use at settlement if the service is back, else never.
//!
//! # Leases
//!
//! A call per request costs Envoy about as much CPU as proxying the request
//! (measured: one `dispatch_grpc_call` per request takes a 2-core gateway
//! from 1.0× to about 0.55× of plain Envoy's throughput; Envoy's own
//! ratelimit filter gets 0.54×). A budget with `lease_fraction` therefore
//! lets each worker (VM) reserve a block of it in the ledger along with a
//! request's estimate, and admit later requests from that block without a
//! call; their settlements go back to (or are taken from) the block. A
//! worker that needs more returns the rest of its block in the same call
//! that takes a new one; near the budget's end it reserves exactly. The
//! ledger still counts every leased count, so the budget holds: with
//! `t*` the last admission checked against the ledger,
//!
//! ```text
//! Σ a_i ≤ B + Σ_{i settled after t*} max(a_i − r_i, 0)
//! ```
//!
//! (without leases, the requests settled after `t*` are exactly those in
//! flight at `t*`; with them, also those a worker admitted from its block
//! after `t*`, at most the block's size over the smallest reservation). What
//! a worker holds and does not use is unavailable to the others until its
//! next call or the window's end: at most two blocks per worker and scope.
//! Remaining headers of a request served from a block are as of the
//! worker's last call.
//!
//! # Why callbacks pause
//!
//! Request headers wait for the body when a request limit applies (one call
//! then asks about limits and budgets, whose estimate needs `max_tokens` and
//! the prompt; the plugin sets `allow_on_headers_stop_iteration`, and the
//! router before it has already buffered the body); with budgets alone they
//! go on and only the body waits. The body waits for the service's answer
//! (`resume_request` in the gRPC callback), and the last response chunk
//! waits for the settlement's answer (`resume_response`).

pub mod actual;
pub mod config;
pub mod identity;
pub mod rls;
pub mod window;

use actual::ResponseUsage;
use config::{Amount, Budget, Compiled, Entry, EntryValue, FailureMode, GuardConfig, Source};
use identity::{descriptor_value, identify, Caller, Identified};
use rls::{Count, Ledger};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use tollgate_core::errors::openai_error_body;
use tollgate_core::request::summarize;
use tollgate_core::usage::{Api, Usage};
use tollgate_host::{BodyBuffer, ConfigError, FilterFactory, Flow, GrpcCall, HeaderMap, Host, HttpFilter, MetricKind};
use tollgate_ratelimit_proto::{Code, DescriptorStatus, RateLimitDescriptor, Unit};
use window::Span;

/// The meter's prompt estimate (tiktoken), set before the guard's body callback.
pub const PROMPT_TOKENS_PROPERTY: &str = "tollgate.prompt_tokens";
/// Property the meter reads the team from (wins over its header).
pub const TEAM_PROPERTY: &str = "tollgate.team";
/// The router's decision as filter state (its headers are for the route table).
pub const ROUTER_MODEL_PROPERTY: &str = "tollgate_model";
pub const ROUTER_TIER_PROPERTY: &str = "tollgate_tier";

/// The guard's counters (Envoy stats, shown on /stats/prometheus as named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Admitted (after the service answered, or from leases alone).
    Allowed,
    /// Of those, admitted from this worker's leases without a call.
    AllowedFromLease,
    /// Refused by a request limit.
    OverLimit,
    /// Refused by a budget.
    OverBudget,
    /// Refused for a missing or unknown key.
    Unauthorized,
    /// Admission calls that failed (dispatch, gRPC status, bad answer).
    RlsErrors,
    /// Of those, the ones that timed out (Envoy reports a timeout as
    /// UNAVAILABLE, so: failed after the whole timeout).
    RlsTimeouts,
    /// Requests admitted because the service failed (fail open).
    FailedOpen,
    /// Requests refused because the service failed (fail closed).
    FailedClosed,
    Settlements,
    SettlementErrors,
    /// Settlements not sent: too close to (or past) the window's end.
    SettlementsDropped,
    /// Reservations of refused requests released.
    Refunds,
    RefundErrors,
    /// A ledger counter past u32::MAX: the budget reads as exhausted.
    LedgerOverflows,
}

impl Stat {
    pub const ALL: [Stat; 15] = [
        Stat::Allowed,
        Stat::AllowedFromLease,
        Stat::OverLimit,
        Stat::OverBudget,
        Stat::Unauthorized,
        Stat::RlsErrors,
        Stat::RlsTimeouts,
        Stat::FailedOpen,
        Stat::FailedClosed,
        Stat::Settlements,
        Stat::SettlementErrors,
        Stat::SettlementsDropped,
        Stat::Refunds,
        Stat::RefundErrors,
        Stat::LedgerOverflows,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::Allowed => "tollgate_guard_allowed_total",
            Stat::AllowedFromLease => "tollgate_guard_allowed_from_lease_total",
            Stat::OverLimit => "tollgate_guard_over_limit_total",
            Stat::OverBudget => "tollgate_guard_over_budget_total",
            Stat::Unauthorized => "tollgate_guard_unauthorized_total",
            Stat::RlsErrors => "tollgate_guard_rls_errors_total",
            Stat::RlsTimeouts => "tollgate_guard_rls_timeouts_total",
            Stat::FailedOpen => "tollgate_guard_failed_open_total",
            Stat::FailedClosed => "tollgate_guard_failed_closed_total",
            Stat::Settlements => "tollgate_guard_settlements_total",
            Stat::SettlementErrors => "tollgate_guard_settlement_errors_total",
            Stat::SettlementsDropped => "tollgate_guard_settlements_dropped_total",
            Stat::Refunds => "tollgate_guard_refunds_total",
            Stat::RefundErrors => "tollgate_guard_refund_errors_total",
            Stat::LedgerOverflows => "tollgate_guard_ledger_overflows_total",
        }
    }
}

/// Metric ids, defined once per VM.
#[derive(Debug, Default)]
struct Metrics {
    ids: Vec<(Stat, u32)>,
}

impl Metrics {
    fn define(host: &dyn Host) -> Self {
        let mut ids = Vec::new();
        for stat in Stat::ALL {
            match host.define_metric(MetricKind::Counter, stat.name()) {
                Ok(id) => ids.push((stat, id)),
                Err(e) => log::warn!("guard: {e}"),
            }
        }
        Self { ids }
    }

    fn add(&self, host: &dyn Host, stat: Stat) {
        if let Some((_, id)) = self.ids.iter().find(|(s, _)| *s == stat) {
            if let Err(e) = host.increment_metric(*id, 1) {
                log::debug!("guard: {e}");
            }
        }
    }
}

struct Shared {
    config: Compiled,
    metrics: Metrics,
    /// This worker's budget leases (a VM serves one worker thread).
    leases: RefCell<HashMap<LeaseKey, Lease>>,
}

/// A budget (by index) for one scope value and window.
type LeaseKey = (usize, Vec<(String, String)>);

/// Counts of a budget reserved in its ledger by this worker, not yet handed
/// to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    available: u64,
    settle_by: i64,
    /// What the budget had left outside this lease at the last call.
    outside: u64,
}

/// Leases kept before expired ones are swept.
const MAX_LEASES: usize = 4096;

pub struct GuardFactory {
    shared: Rc<Shared>,
}

impl FilterFactory for GuardFactory {
    type Filter = GuardFilter;

    fn configure(host: &dyn Host, _root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        let config = tollgate_core::config::parse::<GuardConfig>(config)?.compile()?;
        let metrics = Metrics::define(host);
        Ok(Self { shared: Rc::new(Shared { config, metrics, leases: RefCell::new(HashMap::new()) }) })
    }

    fn new_filter(&self) -> GuardFilter {
        GuardFilter::new(Rc::clone(&self.shared))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u32,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    Start,
    /// Request headers held until the body is complete.
    AwaitBody,
    /// The admission call is in flight; the request is held.
    Admitting(u32),
    /// Admitted: the part of a new lease past the budget is being released.
    Releasing(u32),
    /// Refused: the reservations are being released before the reply.
    Refunding(u32, Reply),
    /// Let through (admitted, failed open, or nothing to check).
    Passed,
    /// A local reply was sent.
    Replied,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Limit,
    Released(usize),
    Reserved(usize),
}

/// A budget this request is checked against.
#[derive(Debug, Clone)]
struct Pending {
    budget: usize,
    /// The ledger's entries, without the `ledger` one.
    entries: Vec<(String, String)>,
    unit: Unit,
    amount: u64,
    span: Span,
    /// Taken from this worker's lease: not in the call.
    from_lease: bool,
    /// Charged to `reserved` on top of `amount`, to lease.
    top_up: u64,
    /// Of an old lease, released in the call.
    returned: u64,
    /// For the headers of a request served from a lease.
    lease_remaining: u64,
    /// Decided by the answer: what of `top_up` the worker keeps…
    granted: u64,
    /// …and what the budget has left after this request (its lease included).
    remaining: u64,
}

/// What the request holds of a budget until it is settled.
#[derive(Debug, Clone)]
struct Reservation {
    budget: usize,
    entries: Vec<(String, String)>,
    unit: Unit,
    reserved: u64,
    settle_by: i64,
    /// The budget leases: settle against this worker's lease first.
    leased: bool,
}

#[derive(Debug)]
enum Settle {
    Idle,
    Tracking(ResponseUsage),
    Waiting(u32),
    Done,
}

/// A limit as the headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gauge {
    limit: u64,
    remaining: u64,
    reset: u64,
}

impl Gauge {
    /// The tighter of two: less remaining, then the later reset.
    fn tighter(self, other: Option<Gauge>) -> Gauge {
        match other {
            Some(o) if (o.remaining, std::cmp::Reverse(o.reset)) <= (self.remaining, std::cmp::Reverse(self.reset)) => o,
            _ => self,
        }
    }
}

/// Why a request is refused, for the message.
#[derive(Debug, Clone)]
enum Refusal {
    Limit { limit: u64, unit: i32, reset: u64 },
    Budget { budget: usize, used: u64, needed: u64, reset: u64, overflow: bool },
}

impl Refusal {
    fn reset(&self) -> u64 {
        match self {
            Refusal::Limit { reset, .. } | Refusal::Budget { reset, .. } => *reset,
        }
    }
}

pub struct GuardFilter {
    shared: Rc<Shared>,
    phase: Phase,
    api: Api,
    caller: Caller,
    model: Option<String>,
    tier: Option<String>,
    content_length: Option<u64>,
    prompt: u64,
    completion: u64,
    slots: Vec<Slot>,
    pending: Vec<Pending>,
    reservations: Vec<Reservation>,
    response_headers: Vec<(String, String)>,
    settle: Settle,
    /// When the admission call left, to tell a timeout from other failures.
    dispatched_at: Option<std::time::SystemTime>,
    /// Admitted because the service failed: settle without waiting for it.
    failed_open: bool,
}

fn unix_now(host: &dyn Host) -> i64 {
    host.now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn seconds_until(at: i64, now: i64) -> u64 {
    u64::try_from(at.saturating_sub(now)).unwrap_or(0)
}

impl GuardFilter {
    fn new(shared: Rc<Shared>) -> Self {
        Self {
            shared,
            phase: Phase::Start,
            api: Api::Other,
            caller: Caller::default(),
            model: None,
            tier: None,
            content_length: None,
            prompt: 0,
            completion: 0,
            slots: Vec::new(),
            pending: Vec::new(),
            reservations: Vec::new(),
            response_headers: Vec::new(),
            settle: Settle::Idle,
            dispatched_at: None,
            failed_open: false,
        }
    }

    fn config(&self) -> &Compiled {
        &self.shared.config
    }

    fn stat(&self, host: &dyn Host, stat: Stat) {
        self.shared.metrics.add(host, stat);
    }

    fn source(&self, source: Source) -> Option<String> {
        match source {
            Source::User => self.caller.user.clone(),
            Source::Team => self.caller.team.clone(),
            Source::Key => self.caller.key.clone(),
            Source::Model => self.model.clone(),
            Source::Tier => self.tier.clone(),
        }
    }

    fn resolve(&self, entries: &[Entry]) -> Option<Vec<(String, String)>> {
        entries
            .iter()
            .map(|entry| {
                let value = match &entry.value {
                    EntryValue::Fixed(value) => Some(value.clone()),
                    EntryValue::From(source) => self.source(*source),
                };
                value.map(|v| (entry.key.clone(), v))
            })
            .collect()
    }

    /// A budget's counts for `usage`.
    fn amount(&self, budget: &Budget, usage: &Usage) -> u64 {
        match budget.amount {
            Amount::Tokens => usage.input.saturating_add(usage.output),
            Amount::Usd { nanos_per_count } => self
                .config()
                .price(self.model.as_deref())
                .map_or(0, |price| price.cost(usage).div_ceil(nanos_per_count.max(1))),
        }
    }

    fn reply(&mut self, host: &dyn Host, reply: &Reply) {
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Err(e) = host.send_local_reply(reply.status, &headers, &reply.body) {
            log::error!("guard: {e}");
        }
        self.phase = Phase::Replied;
    }

    fn error_reply(status: u32, headers: Vec<(String, String)>, message: &str, kind: &str, code: &str) -> Reply {
        let mut headers = headers;
        headers.push(("content-type".into(), "application/json".into()));
        Reply { status, headers, body: openai_error_body(message, kind, Some(code)) }
    }

    // ---- request ------------------------------------------------------------

    fn request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        // One host call for all the headers the guard reads.
        let headers = match host.headers(HeaderMap::Request) {
            Ok(headers) => headers,
            Err(e) => {
                log::warn!("guard: {e}");
                Vec::new()
            }
        };
        let lookup = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        self.api = Api::from_path(&lookup(":path").unwrap_or_default());
        match identify(&config.identity, &lookup) {
            Identified::Caller(caller) => self.caller = caller,
            refused => {
                self.stat(host, Stat::Unauthorized);
                let message = if refused == Identified::MissingKey {
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key`."
                } else {
                    "Incorrect API key provided."
                };
                let reply = Self::error_reply(401, Vec::new(), message, "invalid_request_error", "invalid_api_key");
                self.reply(host, &reply);
                return Flow::Pause;
            }
        }
        self.apply_identity(host);
        let property = |name: &str| {
            host.property(&[name]).ok().flatten().and_then(|bytes| String::from_utf8(bytes).ok())
        };
        // The router before the guard publishes its decision in these headers
        // (and drops any a client sent); its filter state is read only
        // without them, a host call saved per request.
        self.tier = config
            .tier_headers
            .iter()
            .find_map(|h| lookup(h))
            .or_else(|| property(ROUTER_TIER_PROPERTY))
            .and_then(|v| descriptor_value(&v));
        self.model = lookup(&config.model_header).or_else(|| property(ROUTER_MODEL_PROPERTY)).and_then(|v| descriptor_value(&v));
        self.content_length = lookup("content-length").and_then(|v| v.trim().parse().ok());
        if config.rate_limits.is_empty() && config.budgets.is_empty() {
            self.phase = Phase::Passed;
            return Flow::Continue;
        }
        let budgets = !config.budgets.is_empty() && self.api != Api::Other;
        if !end_of_stream && (budgets || (self.model.is_none() && config.needs_model)) {
            // The estimate needs the prompt and `max_tokens` (and, without
            // the router, the model): the body decides. When a request limit
            // applies, the call holds the request anyway, so the headers wait
            // for the body (Envoy delivers it because the plugin sets
            // allow_on_headers_stop_iteration) and one call asks about both.
            // With budgets alone, most requests are admitted from a lease
            // without a call: the headers go on (holding them costs Envoy a
            // good part of a request) and only the body waits.
            let limits = config.rate_limits.iter().any(|entries| self.resolve(entries).is_some());
            self.phase = Phase::AwaitBody;
            return if limits { Flow::Pause } else { Flow::Continue };
        }
        self.read_body(host, None, 0);
        self.admit(host)
    }

    /// A configured key's team goes to the team header and property (for the
    /// meter, which reads them when the response ends); its key header goes.
    fn apply_identity(&self, host: &dyn Host) {
        if !self.caller.verified {
            return;
        }
        let identity = &self.config().identity;
        if let Err(e) = host.set_header(HeaderMap::Request, &identity.team_header, self.caller.team.as_deref()) {
            log::warn!("guard: {e}");
        }
        if let Some(team) = &self.caller.team {
            if let Err(e) = host.set_property(&[TEAM_PROPERTY], team.as_bytes()) {
                log::debug!("guard: {e}");
            }
        }
        if identity.strip_key {
            if let Some(name) = &self.caller.key_header {
                if let Err(e) = host.set_header(HeaderMap::Request, name, None) {
                    log::warn!("guard: {e}");
                }
            }
        }
    }

    /// The request's facts for the estimate: model, completion cap, prompt.
    fn read_body(&mut self, host: &dyn Host, body: Option<&[u8]>, size: usize) {
        let summary = body.and_then(|b| summarize(b).ok());
        if self.model.is_none() {
            self.model = summary.as_ref().and_then(|s| s.model.as_deref()).and_then(descriptor_value);
        }
        self.completion = summary.as_ref().and_then(|s| s.max_tokens).unwrap_or(self.config().default_completion_tokens);
        let meter = host
            .property(&[PROMPT_TOKENS_PROPERTY])
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse::<u64>().ok());
        // Without the meter: a quarter of the body's bytes, which counts the
        // JSON around the prompt too (so it errs on the reserving side) and
        // costs no second parse.
        let bytes = u64::try_from(size).unwrap_or(u64::MAX).max(self.content_length.unwrap_or(0));
        self.prompt = meter.unwrap_or_else(|| bytes.div_ceil(4));
    }

    fn admit(&mut self, host: &dyn Host) -> Flow {
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let now = unix_now(host);
        let mut descriptors: Vec<RateLimitDescriptor> = Vec::new();
        self.slots.clear();
        self.pending.clear();
        for entries in &config.rate_limits {
            if let Some(resolved) = self.resolve(entries) {
                descriptors.push(rls::descriptor(&resolved));
                self.slots.push(Slot::Limit);
            }
        }
        if self.api != Api::Other {
            let estimate = Usage { input: self.prompt, output: self.completion, cached_input: 0 };
            'budgets: for (index, budget) in config.budgets.iter().enumerate() {
                if let Some(models) = &budget.models {
                    if !self.model.as_ref().is_some_and(|m| models.contains(m)) {
                        continue;
                    }
                }
                let mut entries = vec![("budget".to_string(), budget.name.clone())];
                for source in &budget.per {
                    match self.source(*source) {
                        Some(value) => entries.push((source.name().to_string(), value)),
                        None => continue 'budgets,
                    }
                }
                let span = window::span(budget.window, now);
                if let Some(label) = &span.label {
                    entries.push(("month".to_string(), label.clone()));
                }
                let unit = budget.window.unit();
                let amount = self.amount(budget, &estimate);
                let mut pending = Pending {
                    budget: index,
                    entries,
                    unit,
                    amount,
                    span,
                    from_lease: false,
                    top_up: 0,
                    returned: 0,
                    lease_remaining: 0,
                    granted: 0,
                    remaining: 0,
                };
                if budget.lease > 0 {
                    let margin = config.settle_margin_seconds;
                    let mut leases = shared.leases.borrow_mut();
                    let key = (index, pending.entries.clone());
                    let mut outside = None;
                    match leases.get_mut(&key) {
                        Some(lease) if now.saturating_add(margin) < lease.settle_by => {
                            if lease.available >= amount {
                                // Admitted from this worker's lease: no call.
                                lease.available -= amount;
                                pending.from_lease = true;
                                pending.lease_remaining = lease.outside.saturating_add(lease.available);
                                self.pending.push(pending);
                                continue;
                            }
                            // Too little left: give it back, take a new one.
                            pending.returned = lease.available;
                            outside = Some(lease.outside);
                            leases.remove(&key);
                        }
                        Some(_) => {
                            // Its window is over (its counters with it).
                            leases.remove(&key);
                        }
                        None => {}
                    }
                    // Near the budget's end, reserve exactly (no lease).
                    pending.top_up = match outside {
                        Some(outside) if outside < amount.saturating_add(budget.lease.saturating_mul(2)) => 0,
                        _ => budget.lease,
                    };
                }
                let k = self.pending.len();
                // `released` first: read before `reserved` is charged.
                descriptors.push(rls::ledger(&pending.entries, Ledger::Released, unit, pending.returned));
                self.slots.push(Slot::Released(k));
                descriptors.push(rls::ledger(&pending.entries, Ledger::Reserved, unit, amount + pending.top_up));
                self.slots.push(Slot::Reserved(k));
                self.pending.push(pending);
            }
        }
        if descriptors.is_empty() {
            if self.pending.is_empty() {
                self.phase = Phase::Passed;
                return Flow::Continue;
            }
            // Every budget was served from leases and there is no request
            // limit to ask about: admitted here and now.
            return match self.evaluate(host, &[]) {
                Ok((headers, _)) => {
                    self.stat(host, Stat::AllowedFromLease);
                    self.admitted(host, headers, false);
                    Flow::Continue
                }
                Err(e) => {
                    log::warn!("guard: {e}");
                    self.fail(host, false)
                }
            };
        }
        let message = rls::encode(&config.domain, descriptors);
        let call = GrpcCall {
            cluster: &config.cluster,
            service: rls::SERVICE,
            method: rls::METHOD,
            message: &message,
            timeout: config.timeout,
        };
        match host.dispatch_grpc_call(&call) {
            Ok(token) => {
                // Hold the request until the service answers (resumed in
                // on_grpc_call_response, or refused with a local reply there).
                self.phase = Phase::Admitting(token);
                self.dispatched_at = Some(host.now());
                Flow::Pause
            }
            Err(e) => {
                log::warn!("guard: cannot call the rate-limit service (cluster {}): {e}", config.cluster);
                self.stat(host, Stat::RlsErrors);
                self.fail(host, false)
            }
        }
    }

    /// What each pending budget call leaves reserved, `reserved` saying how much.
    fn reservations_from_pending(&self, reserved: impl Fn(&Pending) -> u64) -> Vec<Reservation> {
        let config = self.config();
        self.pending
            .iter()
            .map(|p| Reservation {
                budget: p.budget,
                entries: p.entries.clone(),
                unit: p.unit,
                reserved: reserved(p),
                settle_by: p.span.resets_at,
                leased: config.budgets.get(p.budget).is_some_and(|b| b.lease > 0),
            })
            .collect()
    }

    /// The service failed: the configured failure mode decides. `held`: the
    /// request is paused (so it must be resumed to go on).
    fn fail(&mut self, host: &dyn Host, held: bool) -> Flow {
        match self.config().failure_mode {
            FailureMode::Allow => {
                self.stat(host, Stat::FailedOpen);
                self.failed_open = true;
                // Nothing was (knowingly) reserved by the call: the
                // settlement charges the whole use, if the service is back by
                // then. What came from a lease stays reserved.
                self.reservations = self.reservations_from_pending(|p| if p.from_lease { p.amount } else { 0 });
                self.phase = Phase::Passed;
                if held {
                    if let Err(e) = host.resume_request() {
                        log::error!("guard: {e}");
                    }
                }
                Flow::Continue
            }
            FailureMode::Deny => {
                self.stat(host, Stat::FailedClosed);
                self.return_to_leases(host);
                let reply = Self::error_reply(
                    self.config().failure_status,
                    Vec::new(),
                    "The gateway's rate-limit service is unavailable; the request was not admitted.",
                    "api_error",
                    "rate_limit_service_unavailable",
                );
                self.reply(host, &reply);
                Flow::Pause
            }
        }
    }

    /// Gives what this request took from leases back (it was not admitted).
    fn return_to_leases(&self, host: &dyn Host) {
        let now = unix_now(host);
        let margin = self.config().settle_margin_seconds;
        let mut leases = self.shared.leases.borrow_mut();
        for p in self.pending.iter().filter(|p| p.from_lease) {
            if let Some(lease) = leases.get_mut(&(p.budget, p.entries.clone())) {
                if now.saturating_add(margin) < lease.settle_by {
                    lease.available = lease.available.saturating_add(p.amount);
                }
            }
        }
    }

    fn admission_answer(&mut self, host: &dyn Host, status: u32, size: usize) {
        if status != 0 {
            let elapsed = self.dispatched_at.and_then(|at| host.now().duration_since(at).ok()).unwrap_or_default();
            let timeout = self.config().timeout;
            if status == 4 || elapsed + std::time::Duration::from_millis(5) >= timeout {
                self.stat(host, Stat::RlsTimeouts);
            }
            self.stat(host, Stat::RlsErrors);
            log::warn!(
                "guard: rate-limit service call failed with gRPC status {status} after {} ms",
                elapsed.as_millis()
            );
            self.fail(host, true);
            return;
        }
        let answer = host
            .body(BodyBuffer::GrpcResponse, 0, size)
            .map_err(|e| e.to_string())
            .and_then(|bytes| rls::decode(&bytes.unwrap_or_default()));
        let response = match answer {
            Ok(response) if response.statuses.len() == self.slots.len() => response,
            Ok(response) => {
                log::warn!(
                    "guard: rate-limit service answered {} statuses for {} descriptors",
                    response.statuses.len(),
                    self.slots.len()
                );
                self.stat(host, Stat::RlsErrors);
                self.fail(host, true);
                return;
            }
            Err(e) => {
                log::warn!("guard: {e}");
                self.stat(host, Stat::RlsErrors);
                self.fail(host, true);
                return;
            }
        };
        match self.evaluate(host, &response.statuses) {
            Ok((headers, refusals)) if refusals.is_empty() => self.admitted(host, headers, true),
            Ok((headers, refusals)) => self.refused(host, headers, &refusals),
            Err(e) => {
                log::warn!("guard: {e}");
                self.stat(host, Stat::RlsErrors);
                self.fail(host, true);
            }
        }
    }

    /// Reads the statuses: the response headers and the reasons to refuse.
    #[allow(clippy::type_complexity)]
    fn evaluate(
        &mut self,
        host: &dyn Host,
        statuses: &[DescriptorStatus],
    ) -> Result<(Vec<(String, String)>, Vec<Refusal>), String> {
        let now = unix_now(host);
        let mut refusals = Vec::new();
        let mut requests: Option<Gauge> = None;
        let mut released = vec![None; self.pending.len()];
        let mut reserved = vec![None; self.pending.len()];
        for (slot, status) in self.slots.iter().zip(statuses) {
            match slot {
                Slot::Limit => {
                    let Some(limit) = &status.current_limit else { continue };
                    let gauge = Gauge {
                        limit: u64::from(limit.requests_per_unit),
                        remaining: u64::from(status.limit_remaining),
                        reset: rls::reset_seconds(status),
                    };
                    if status.code == Code::OverLimit as i32 {
                        refusals.push(Refusal::Limit { limit: gauge.limit, unit: limit.unit, reset: gauge.reset });
                    }
                    requests = Some(gauge.tighter(requests));
                }
                Slot::Released(k) => {
                    if let Some(slot) = released.get_mut(*k) {
                        *slot = Some(rls::count(status));
                    }
                }
                Slot::Reserved(k) => {
                    if let Some(slot) = reserved.get_mut(*k) {
                        *slot = Some(rls::count(status));
                    }
                }
            }
        }
        let mut tokens: Option<Gauge> = None;
        let mut usd: Option<Gauge> = None;
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        for (k, pending) in self.pending.iter_mut().enumerate() {
            let Some(budget) = config.budgets.get(pending.budget) else { continue };
            let reset = seconds_until(pending.span.resets_at, now);
            let counts = (released.get(k).copied().flatten(), reserved.get(k).copied().flatten());
            let (used, fits, overflow) = match counts {
                _ if pending.from_lease => (0, true, false),
                (Some(Count::Value(out)), Some(Count::Value(reserved_after))) => {
                    // `released` includes what this worker returned of an old
                    // lease in the same call, so `used` leaves it out.
                    let charged = pending.amount.saturating_add(pending.top_up);
                    let used = reserved_after.saturating_sub(charged).saturating_sub(out);
                    let fits = used < budget.limit && used.saturating_add(pending.amount) <= budget.limit;
                    (used, fits, false)
                }
                (Some(Count::NoLimit), _) | (_, Some(Count::NoLimit)) => {
                    return Err(format!(
                        "the rate-limit service applied no limit to budget `{}`: does it know domain `{}`?",
                        budget.name, config.domain
                    ))
                }
                (Some(Count::Overflow), _) | (_, Some(Count::Overflow)) => {
                    log::warn!("guard: budget `{}` ledger is past u32::MAX; refusing", budget.name);
                    shared.metrics.add(host, Stat::LedgerOverflows);
                    (budget.limit, false, true)
                }
                _ => return Err("missing ledger statuses".into()),
            };
            let remaining = if pending.from_lease {
                pending.lease_remaining
            } else if fits {
                let left = budget.limit - used - pending.amount;
                pending.granted = pending.top_up.min(left);
                left
            } else {
                budget.limit.saturating_sub(used)
            };
            pending.remaining = remaining;
            if !fits {
                refusals.push(Refusal::Budget { budget: pending.budget, used, needed: pending.amount, reset, overflow });
            }
            match budget.amount {
                Amount::Tokens => tokens = Some(Gauge { limit: budget.limit, remaining, reset }.tighter(tokens)),
                Amount::Usd { nanos_per_count } => {
                    let gauge = Gauge {
                        limit: budget.limit.saturating_mul(nanos_per_count),
                        remaining: remaining.saturating_mul(nanos_per_count),
                        reset,
                    };
                    usd = Some(gauge.tighter(usd));
                }
            }
        }
        let mut headers = Vec::new();
        for (suffix, gauge) in [("requests", requests), ("tokens", tokens), ("usd", usd)] {
            let Some(gauge) = gauge else { continue };
            let (limit, remaining) = if suffix == "usd" {
                (rls::format_usd(gauge.limit), rls::format_usd(gauge.remaining))
            } else {
                (gauge.limit.to_string(), gauge.remaining.to_string())
            };
            headers.push((format!("x-ratelimit-limit-{suffix}"), limit));
            headers.push((format!("x-ratelimit-remaining-{suffix}"), remaining));
            headers.push((format!("x-ratelimit-reset-{suffix}"), rls::format_reset(gauge.reset)));
        }
        Ok((headers, refusals))
    }

    /// `held`: the request is paused and must be resumed.
    fn admitted(&mut self, host: &dyn Host, headers: Vec<(String, String)>, held: bool) {
        self.stat(host, Stat::Allowed);
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let now = unix_now(host);
        let mut releases = Vec::new();
        {
            let mut leases = shared.leases.borrow_mut();
            for p in self.pending.iter().filter(|p| !p.from_lease && p.top_up > 0) {
                // The new lease: what fitted of the top-up; the rest goes back.
                if p.granted > 0 {
                    let key = (p.budget, p.entries.clone());
                    let lease = leases.entry(key).or_insert(Lease { available: 0, settle_by: p.span.resets_at, outside: 0 });
                    lease.available = lease.available.saturating_add(p.granted);
                    lease.settle_by = p.span.resets_at;
                    lease.outside = p.remaining.saturating_sub(p.granted);
                }
                if p.top_up > p.granted {
                    releases.push(rls::ledger(&p.entries, Ledger::Released, p.unit, p.top_up - p.granted));
                }
            }
            if leases.len() > MAX_LEASES {
                let margin = config.settle_margin_seconds;
                leases.retain(|_, lease| now.saturating_add(margin) < lease.settle_by);
            }
        }
        self.reservations = self.reservations_from_pending(|p| p.amount);
        self.response_headers = headers;
        self.phase = Phase::Passed;
        if !held {
            return;
        }
        if !releases.is_empty() {
            match self.dispatch(host, releases) {
                Ok(token) => {
                    // Hold the request until the part of the lease past the
                    // budget is released (a call of an ended stream is cancelled).
                    self.phase = Phase::Releasing(token);
                    return;
                }
                Err(e) => {
                    log::warn!("guard: cannot release a lease's excess: {e}");
                    self.stat(host, Stat::RefundErrors);
                }
            }
        }
        if let Err(e) = host.resume_request() {
            log::error!("guard: {e}");
        }
    }


    fn refused(&mut self, host: &dyn Host, mut headers: Vec<(String, String)>, refusals: &[Refusal]) {
        let config = self.config();
        let retry_after = refusals.iter().map(Refusal::reset).max().unwrap_or(1).max(1);
        headers.push(("retry-after".into(), retry_after.to_string()));
        let limit = refusals.iter().find(|r| matches!(r, Refusal::Limit { .. }));
        let budget = refusals.iter().find(|r| matches!(r, Refusal::Budget { .. }));
        let reply = match (limit, budget) {
            (Some(Refusal::Limit { limit, unit, .. }), _) => {
                self.stat(host, Stat::OverLimit);
                let message = format!(
                    "Rate limit reached: {limit} requests per {}. Retry after {retry_after}s.",
                    rls::unit_name(*unit)
                );
                Self::error_reply(429, headers, &message, "requests", "rate_limit_exceeded")
            }
            (_, Some(Refusal::Budget { budget, used, needed, overflow, .. })) => {
                self.stat(host, Stat::OverBudget);
                let (message, kind, code) = match config.budgets.get(*budget) {
                    Some(b) => budget_message(b, *used, *needed, *overflow, retry_after),
                    None => ("Budget exceeded.".to_string(), "tokens", "rate_limit_exceeded"),
                };
                Self::error_reply(429, headers, &message, kind, code)
            }
            _ => Self::error_reply(429, headers, "Rate limit reached.", "requests", "rate_limit_exceeded"),
        };
        // Release what this refused request reserved, then reply: a call
        // still pending when the stream ends would be cancelled. What it took
        // from a lease goes back to the lease.
        self.return_to_leases(host);
        let refunds: Vec<RateLimitDescriptor> = self
            .pending
            .iter()
            .filter(|p| !p.from_lease && p.amount + p.top_up > 0)
            .map(|p| rls::ledger(&p.entries, Ledger::Released, p.unit, p.amount + p.top_up))
            .collect();
        if refunds.is_empty() {
            self.reply(host, &reply);
            return;
        }
        match self.dispatch(host, refunds) {
            Ok(token) => {
                self.stat(host, Stat::Refunds);
                self.phase = Phase::Refunding(token, reply);
            }
            Err(e) => {
                log::warn!("guard: cannot release a refused reservation: {e}");
                self.stat(host, Stat::RefundErrors);
                self.reply(host, &reply);
            }
        }
    }

    fn dispatch(&self, host: &dyn Host, descriptors: Vec<RateLimitDescriptor>) -> Result<u32, tollgate_host::HostError> {
        let config = self.config();
        let message = rls::encode(&config.domain, descriptors);
        host.dispatch_grpc_call(&GrpcCall {
            cluster: &config.cluster,
            service: rls::SERVICE,
            method: rls::METHOD,
            message: &message,
            timeout: config.timeout,
        })
    }

    // ---- response -----------------------------------------------------------

    /// The ledger charges that settle this request's reservations for what
    /// it used (`None`: unknown, the reservation stands). `only_excess`
    /// releases nothing (the use may be larger than what was seen).
    fn settlement(&self, host: &dyn Host, used: Option<Usage>, only_excess: bool) -> Vec<RateLimitDescriptor> {
        let config = self.config();
        let now = unix_now(host);
        let mut descriptors = Vec::new();
        for reservation in &self.reservations {
            let Some(budget) = config.budgets.get(reservation.budget) else { continue };
            let actual = used.as_ref().map_or(reservation.reserved, |u| self.amount(budget, u));
            if actual == reservation.reserved || (only_excess && actual < reservation.reserved) {
                continue;
            }
            if now.saturating_add(config.settle_margin_seconds) >= reservation.settle_by {
                // It could land in the next window's counters.
                self.stat(host, Stat::SettlementsDropped);
                continue;
            }
            let (mut charge, mut release) = if actual > reservation.reserved {
                (actual - reservation.reserved, 0)
            } else {
                (0, reservation.reserved - actual)
            };
            if reservation.leased {
                // Settle against this worker's lease of the budget first: the
                // unused part goes back to it, an excess is taken from it.
                let mut leases = self.shared.leases.borrow_mut();
                if let Some(lease) = leases.get_mut(&(reservation.budget, reservation.entries.clone())) {
                    if now.saturating_add(config.settle_margin_seconds) < lease.settle_by {
                        let taken = charge.min(lease.available);
                        lease.available = lease.available - taken + release;
                        charge -= taken;
                        // Past two leases' worth, the rest goes back to the budget.
                        let keep = budget.lease.saturating_mul(2);
                        release = lease.available.saturating_sub(keep);
                        lease.available -= release;
                    }
                }
            }
            if charge > 0 {
                descriptors.push(rls::ledger(&reservation.entries, Ledger::Reserved, reservation.unit, charge));
            }
            if release > 0 {
                descriptors.push(rls::ledger(&reservation.entries, Ledger::Released, reservation.unit, release));
            }
        }
        descriptors
    }

    fn settle_now(&mut self, host: &dyn Host) -> Flow {
        let Settle::Tracking(usage) = std::mem::replace(&mut self.settle, Settle::Done) else {
            return Flow::Continue;
        };
        let descriptors = self.settlement(host, usage.usage(self.prompt), false);
        if descriptors.is_empty() {
            return Flow::Continue;
        }
        match self.dispatch(host, descriptors) {
            Ok(_) if self.failed_open => {
                // The service failed at admission: do not hold the response
                // for it again (best effort; Envoy may cancel the call).
                self.stat(host, Stat::Settlements);
                Flow::Continue
            }
            Ok(token) => {
                self.stat(host, Stat::Settlements);
                // Hold the end of the response until the service has counted
                // the settlement: Envoy cancels a call whose stream is gone.
                self.settle = Settle::Waiting(token);
                Flow::Pause
            }
            Err(e) => {
                log::warn!("guard: cannot settle a reservation: {e}");
                self.stat(host, Stat::SettlementErrors);
                Flow::Continue
            }
        }
    }

    fn response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        if !matches!(self.phase, Phase::Passed) {
            return Flow::Continue;
        }
        for (name, value) in &self.response_headers {
            if let Err(e) = host.set_header(HeaderMap::Response, name, Some(value)) {
                log::warn!("guard: {e}");
                break;
            }
        }
        if self.reservations.is_empty() {
            return Flow::Continue;
        }
        let lookup = |name: &str| match host.header(HeaderMap::Response, name) {
            Ok(value) => value,
            Err(e) => {
                log::debug!("guard: {e}");
                None
            }
        };
        let status = lookup(":status").and_then(|s| s.parse().ok());
        let content_type = lookup("content-type").unwrap_or_default();
        let encoding = lookup("content-encoding").unwrap_or_default();
        self.settle =
            Settle::Tracking(ResponseUsage::start(self.api, status, &content_type, &encoding, self.config().max_body_bytes));
        if end_of_stream {
            return self.settle_now(host);
        }
        Flow::Continue
    }

    fn response_body(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Settle::Tracking(usage) = &mut self.settle else {
            return Flow::Continue;
        };
        if size > 0 && usage.successful() {
            match host.body(BodyBuffer::Response, 0, size) {
                Ok(Some(bytes)) => usage.chunk(&bytes),
                Ok(None) => {}
                Err(e) => log::warn!("guard: {e}"),
            }
        }
        if end_of_stream {
            return self.settle_now(host);
        }
        Flow::Continue
    }
}

fn budget_message(budget: &Budget, used: u64, needed: u64, overflow: bool, retry_after: u64) -> (String, &'static str, &'static str) {
    let window = budget.window.name();
    if overflow {
        return (
            format!("Budget `{}` cannot be read (its counters overflowed); retry after {retry_after}s.", budget.name),
            "insufficient_quota",
            "insufficient_quota",
        );
    }
    match budget.amount {
        Amount::Tokens => (
            format!(
                "Token budget `{}` exceeded: {} tokens per {window}, {used} used or reserved, this request needs up to {needed}. Retry after {retry_after}s.",
                budget.name, budget.limit
            ),
            "tokens",
            "rate_limit_exceeded",
        ),
        Amount::Usd { nanos_per_count } => (
            format!(
                "Budget `{}` exceeded: ${} per {window}, ${} used or reserved, this request may cost up to ${}. Retry after {retry_after}s.",
                budget.name,
                rls::format_usd(budget.limit.saturating_mul(nanos_per_count)),
                rls::format_usd(used.saturating_mul(nanos_per_count)),
                rls::format_usd(needed.saturating_mul(nanos_per_count)),
            ),
            "insufficient_quota",
            "insufficient_quota",
        ),
    }
}

impl HttpFilter for GuardFilter {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        if !matches!(self.phase, Phase::Start) {
            return Flow::Continue;
        }
        self.request_headers(host, end_of_stream)
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        match self.phase {
            Phase::AwaitBody => {
                let max = self.config().max_body_bytes;
                if !end_of_stream && body_size <= max {
                    // Buffer until the body is complete (the router before
                    // the guard usually delivers it whole).
                    return Flow::Pause;
                }
                let body = if body_size <= max {
                    match host.body(BodyBuffer::Request, 0, body_size) {
                        Ok(body) => body,
                        Err(e) => {
                            log::warn!("guard: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                self.read_body(host, body.as_deref(), body_size);
                self.admit(host)
            }
            // Still waiting for the service, or refused: Envoy keeps the body.
            Phase::Admitting(_) | Phase::Releasing(_) | Phase::Refunding(..) | Phase::Replied => Flow::Pause,
            Phase::Start | Phase::Passed => Flow::Continue,
        }
    }

    fn on_grpc_call_response(&mut self, host: &dyn Host, token: u32, status: u32, size: usize) {
        match &self.phase {
            Phase::Admitting(t) if *t == token => {
                self.admission_answer(host, status, size);
                return;
            }
            Phase::Releasing(t) if *t == token => {
                if status != 0 {
                    log::warn!("guard: releasing a lease's excess failed with gRPC status {status}");
                    self.stat(host, Stat::RefundErrors);
                }
                self.phase = Phase::Passed;
                if let Err(e) = host.resume_request() {
                    log::error!("guard: {e}");
                }
                return;
            }
            Phase::Refunding(t, reply) if *t == token => {
                if status != 0 {
                    log::warn!("guard: releasing a refused reservation failed with gRPC status {status}");
                    self.stat(host, Stat::RefundErrors);
                }
                let reply = reply.clone();
                self.reply(host, &reply);
                return;
            }
            _ => {}
        }
        match self.settle {
            Settle::Waiting(t) if t == token => {
                if status != 0 {
                    log::warn!("guard: settlement failed with gRPC status {status}");
                    self.stat(host, Stat::SettlementErrors);
                }
                self.settle = Settle::Done;
                if let Err(e) = host.resume_response() {
                    log::error!("guard: {e}");
                }
            }
            _ => log::debug!("guard: answer to a call no longer awaited ({token})"),
        }
    }

    fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        self.response_headers(host, end_of_stream)
    }

    fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        self.response_body(host, body_size, end_of_stream)
    }

    fn on_log(&mut self, host: &dyn Host) {
        // A response that never ended (client gone, stream reset): charge
        // what was seen beyond the reservation, release nothing. Best effort:
        // Envoy may cancel the call with the stream.
        if let Settle::Tracking(usage) = std::mem::replace(&mut self.settle, Settle::Done) {
            let descriptors = self.settlement(host, usage.usage(self.prompt), true);
            if !descriptors.is_empty() {
                match self.dispatch(host, descriptors) {
                    Ok(_) => self.stat(host, Stat::Settlements),
                    Err(e) => {
                        log::warn!("guard: cannot settle a reservation: {e}");
                        self.stat(host, Stat::SettlementErrors);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
