//! Opt-in timing of every host call, for `make bench`'s host-call table
//! (feature `call-timing`; without it [`timed`] is the call itself).
//!
//! Each call is timed with the host's own clock and summed per call name in
//! the VM; every [`REPORT_EVERY`] finished contexts the sums since the last
//! report are logged as one JSON line after [`REPORT_PREFIX`], then reset.
//! Summing the lines gives each call's mean cost in place, with the module's
//! real memory, code and call mix (a tight loop of one call reads lower).

#[cfg(feature = "call-timing")]
mod enabled {
    use proxy_wasm::hostcalls;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    pub const REPORT_PREFIX: &str = "tollgate call timing: ";
    pub const REPORT_EVERY: u64 = 1000;
    /// The name under which the cost of the timing itself (two clock reads)
    /// is reported.
    const TIMER: &str = "timer";

    #[derive(Default)]
    struct Sums {
        calls: BTreeMap<&'static str, (u64, u64)>,
        contexts: u64,
    }

    thread_local! {
        static SUMS: RefCell<Sums> = RefCell::default();
    }

    fn nanos() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn timed<T>(name: &'static str, call: impl FnOnce() -> T) -> T {
        let start = nanos();
        let result = call();
        let elapsed = nanos().saturating_sub(start);
        SUMS.with(|sums| {
            let mut sums = sums.borrow_mut();
            let entry = sums.calls.entry(name).or_default();
            entry.0 += 1;
            entry.1 += elapsed;
        });
        result
    }

    pub fn context_done() {
        timed(TIMER, || ());
        let report = SUMS.with(|sums| {
            let mut sums = sums.borrow_mut();
            sums.contexts += 1;
            if sums.contexts < REPORT_EVERY {
                return None;
            }
            let calls: Vec<String> =
                sums.calls.iter().map(|(name, (count, ns))| format!("\"{name}\":[{count},{ns}]")).collect();
            *sums = Sums::default();
            Some(format!("{{{}}}", calls.join(",")))
        });
        if let Some(report) = report {
            log::warn!("{REPORT_PREFIX}{report}");
        }
    }
}

#[cfg(feature = "call-timing")]
pub use enabled::{context_done, timed};

#[cfg(not(feature = "call-timing"))]
#[inline(always)]
pub fn timed<T>(_name: &'static str, call: impl FnOnce() -> T) -> T {
    call()
}

#[cfg(not(feature = "call-timing"))]
#[inline(always)]
pub fn context_done() {}
