//! Memory-aware workers: a worker measures its resident memory against its limit, at least every
//! 250 ms, and acts on the pressure level before memory runs out.
//!
//! - **warning** (70 % of the limit by default): it keeps no new warm state (orchestration runs
//!   and entities not live yet are not kept after their turns and commands), and other workers
//!   may take the tasks of the instances it keeps warm at once: its affinity is handed away
//!   through its published pressure.
//! - **critical** (85 %): it evicts warm state, the most bytes freed per unit of locality lost
//!   first, never what is pinned (a run with a commit in flight, an entity a command holds).
//! - **reject** (95 %): its circuit breaker opens: it claims nothing until memory is back under
//!   warning, leaves new work to other workers, and sheds its warm state.
//!
//! A run whose footprint is far above its peers' is flagged as a leak: evicted once, rebuilt by
//! its next turn's replay, and reported. The figures go out with every heartbeat (in the
//! `workers` table, shown by `quark worker list`) and as metrics.
//!
//! The pieces: [`probe`] reads the operating system, [`pressure`] turns readings into levels,
//! and the governor acts on them.

pub(crate) mod governor;
pub mod pressure;
pub mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quark_history::{Pressure, WorkerLoad};
use tokio::sync::{Notify, watch};

pub use pressure::Thresholds;
pub use probe::{MemoryProbe, ProcProbe};

/// The longest interval between two memory samples: a worker must see memory climb before it
/// runs out.
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// How a worker watches its memory. Built with [`MemoryConfig::default`] and its setters, given
/// to [`WorkerBuilder::memory`](crate::WorkerBuilder::memory).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// The limit the thresholds are fractions of. `None`: the control group's limit if the
    /// process has one, else the machine's memory. A limit above either is refused.
    pub limit: Option<u64>,
    /// The pressure thresholds.
    pub thresholds: Thresholds,
    /// How often memory is sampled (at most [`MAX_SAMPLE_INTERVAL`]).
    pub sample_every: Duration,
    /// The time constant of the moving average readings are smoothed with (a reading this old
    /// weighs `1/e` of a fresh one). A single reading past the reject threshold rejects at once.
    pub smoothing: Duration,
    /// When a warm run counts as leaking.
    pub leaks: LeakDetection,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limit: None,
            thresholds: Thresholds::default(),
            sample_every: Duration::from_millis(100),
            smoothing: Duration::from_secs(1),
            leaks: LeakDetection::default(),
        }
    }
}

impl MemoryConfig {
    /// Sets the limit, in bytes.
    pub fn limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Sets the thresholds.
    pub fn thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sets the sampling interval.
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.sample_every = every;
        self
    }

    /// Sets the smoothing time constant.
    pub fn smoothing(mut self, tau: Duration) -> Self {
        self.smoothing = tau;
        self
    }

    /// Sets the leak detection.
    pub fn leaks(mut self, leaks: LeakDetection) -> Self {
        self.leaks = leaks;
        self
    }
}

/// A warm run is a suspected leak when its footprint is above `factor` times the median of the
/// worker's warm runs and above `floor` bytes, with at least `min_peers` runs to compare with.
/// It is evicted once (its next turn rebuilds it by replay); a run that comes back as large
/// holds large state, not a leak, and stays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakDetection {
    /// How many times the median footprint is abnormal (default 16).
    pub factor: f64,
    /// Footprints below this are never suspect (default 1 MiB).
    pub floor: usize,
    /// Fewer warm runs than this are not compared (default 8).
    pub min_peers: usize,
}

impl Default for LeakDetection {
    fn default() -> Self {
        LeakDetection {
            factor: 16.0,
            floor: 1 << 20,
            min_peers: 8,
        }
    }
}

/// A memory figure for messages: `1.5 GiB`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The configuration checked against the machine: the limit in force, and whether memory can be
/// measured at all.
#[derive(Clone)]
pub(crate) struct Resolved {
    pub(crate) config: MemoryConfig,
    pub(crate) limit: u64,
    pub(crate) probe: Arc<dyn MemoryProbe>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("config", &self.config)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Checks `config` against what `probe` reads: refuses thresholds out of order, a sampling
/// interval past [`MAX_SAMPLE_INTERVAL`], and a limit of zero or above the machine's memory or
/// the control group's limit. A limit the probe cannot read falls back to the configured one;
/// with neither, memory is not governed (`None`), and the worker says so.
pub(crate) fn resolve(
    config: MemoryConfig,
    probe: Arc<dyn MemoryProbe>,
) -> Result<Option<Resolved>, String> {
    config.thresholds.validate()?;
    if config.sample_every.is_zero() || config.sample_every > MAX_SAMPLE_INTERVAL {
        return Err(format!(
            "the memory sampling interval must be above 0 and at most {MAX_SAMPLE_INTERVAL:?}, \
             got {:?}",
            config.sample_every
        ));
    }
    let leaks = config.leaks;
    if !(leaks.factor.is_finite() && leaks.factor > 1.0) {
        return Err(format!(
            "the leak factor must be a number above 1, got {}",
            leaks.factor
        ));
    }
    let machine = probe.machine();
    let group = probe.group_limit();
    let limit = match config.limit {
        Some(0) => return Err("the memory limit must be above 0 bytes".into()),
        Some(limit) => {
            if let Ok(machine) = &machine
                && limit > *machine
            {
                return Err(format!(
                    "the memory limit {} is above this machine's memory ({})",
                    human(limit),
                    human(*machine)
                ));
            }
            if let Ok(Some(group)) = &group
                && limit > *group
            {
                return Err(format!(
                    "the memory limit {} is above this process's control group limit ({}): \
                     the kernel would stop it first",
                    human(limit),
                    human(*group)
                ));
            }
            if let Err(e) = &group {
                tracing::warn!(error = %e, limit = %human(limit),
                    "cannot read this process's control group limit; using the configured limit");
            }
            limit
        }
        None => match (group, machine) {
            (Ok(Some(group)), _) => group,
            (Ok(None), Ok(machine)) => machine,
            (Err(e), Ok(machine)) => {
                tracing::warn!(error = %e, machine = %human(machine),
                    "cannot read this process's control group limit; using the machine's memory");
                machine
            }
            (_, Err(e)) => {
                tracing::warn!(error = %e,
                    "cannot read this machine's memory, and no memory limit is configured: \
                     memory pressure is not governed (configure a limit)");
                return Ok(None);
            }
        },
    };
    if let Err(e) = probe.resident() {
        tracing::warn!(error = %e,
            "cannot read this process's resident memory: memory pressure is not governed");
        return Ok(None);
    }
    Ok(Some(Resolved {
        config,
        limit,
        probe,
    }))
}

/// What the governor publishes to the rest of the worker.
#[derive(Debug)]
pub(crate) struct Status {
    pressure: watch::Sender<Pressure>,
    /// The circuit breaker: open from reject until memory is back under warning.
    breaker: watch::Sender<bool>,
    rss: AtomicU64,
    limit: AtomicU64,
    /// Set while the governor runs (memory is measured).
    measured: AtomicBool,
    /// Wakes the lease keeper for a heartbeat now (the level changed).
    pub(crate) beat: Notify,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            pressure: watch::Sender::new(Pressure::Normal),
            breaker: watch::Sender::new(false),
            rss: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            measured: AtomicBool::new(false),
            beat: Notify::new(),
        }
    }
}

impl Status {
    pub(crate) fn pressure(&self) -> Pressure {
        *self.pressure.borrow()
    }

    pub(crate) fn watch_pressure(&self) -> watch::Receiver<Pressure> {
        self.pressure.subscribe()
    }

    /// Whether the breaker is open (no claims).
    pub(crate) fn breaker_open(&self) -> bool {
        *self.breaker.borrow()
    }

    /// Waits until the breaker is closed.
    pub(crate) async fn breaker_closed(&self) {
        let mut rx = self.breaker.subscribe();
        let _ = rx.wait_for(|open| !*open).await;
    }

    pub(crate) fn set(&self, pressure: Pressure, breaker_open: bool) {
        // The breaker first: whoever sees the new level sees the breaker that goes with it.
        self.breaker.send_if_modified(|b| {
            let changed = *b != breaker_open;
            *b = breaker_open;
            changed
        });
        self.pressure.send_if_modified(|p| {
            let changed = *p != pressure;
            *p = pressure;
            changed
        });
    }

    pub(crate) fn record(&self, rss: u64, limit: u64) {
        self.rss.store(rss, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
    }

    /// The load to publish, with the warm state's figures filled in by the caller.
    pub(crate) fn load(&self) -> WorkerLoad {
        WorkerLoad {
            pressure: self.pressure(),
            rss_bytes: self.rss.load(Ordering::Relaxed),
            memory_limit: self.limit.load(Ordering::Relaxed),
            ..WorkerLoad::default()
        }
    }

    pub(crate) fn reading(&self) -> MemoryReading {
        MemoryReading {
            pressure: self.pressure(),
            breaker_open: self.breaker_open(),
            rss_bytes: self.rss.load(Ordering::Relaxed),
            limit: self.limit.load(Ordering::Relaxed),
            measured: self.measured.load(Ordering::Relaxed),
        }
    }
}

/// A worker's memory as its governor last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// The pressure level.
    pub pressure: Pressure,
    /// Whether the circuit breaker is open: the worker claims nothing.
    pub breaker_open: bool,
    /// Resident memory, smoothed, in bytes.
    pub rss_bytes: u64,
    /// The limit in force, in bytes.
    pub limit: u64,
    /// Whether memory is measured at all (see [`MemoryConfig`]).
    pub measured: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    struct Fixed {
        rss: io::Result<u64>,
        group: io::Result<Option<u64>>,
        machine: io::Result<u64>,
    }

    fn copy<T: Copy>(r: &io::Result<T>) -> io::Result<T> {
        match r {
            Ok(v) => Ok(*v),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }

    impl MemoryProbe for Fixed {
        fn resident(&self) -> io::Result<u64> {
            copy(&self.rss)
        }
        fn group_limit(&self) -> io::Result<Option<u64>> {
            copy(&self.group)
        }
        fn machine(&self) -> io::Result<u64> {
            copy(&self.machine)
        }
    }

    const GIB: u64 = 1 << 30;

    fn probe(group: Option<u64>) -> Arc<dyn MemoryProbe> {
        Arc::new(Fixed {
            rss: Ok(100 << 20),
            group: Ok(group),
            machine: Ok(8 * GIB),
        })
    }

    fn unreadable() -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, "no /proc here")
    }

    #[test]
    fn the_limit_is_the_configured_one_else_the_group_s_else_the_machine_s() {
        let limit =
            |config: MemoryConfig, group| resolve(config, probe(group)).unwrap().unwrap().limit;
        assert_eq!(limit(MemoryConfig::default(), None), 8 * GIB);
        assert_eq!(limit(MemoryConfig::default(), Some(2 * GIB)), 2 * GIB);
        assert_eq!(
            limit(MemoryConfig::default().limit(GIB), Some(2 * GIB)),
            GIB
        );
    }

    #[test]
    fn it_refuses_a_limit_above_the_machine_or_the_group_and_bad_settings() {
        let refused = |config: MemoryConfig, group| resolve(config, probe(group)).unwrap_err();
        let e = refused(MemoryConfig::default().limit(16 * GIB), None);
        assert_eq!(
            e,
            "the memory limit 16.0 GiB is above this machine's memory (8.0 GiB)"
        );
        let e = refused(MemoryConfig::default().limit(4 * GIB), Some(2 * GIB));
        assert!(
            e.contains("above this process's control group limit (2.0 GiB)"),
            "{e}"
        );
        let e = refused(MemoryConfig::default().limit(0), None);
        assert!(e.contains("above 0"), "{e}");
        let e = refused(
            MemoryConfig::default().sample_every(Duration::from_secs(1)),
            None,
        );
        assert!(e.contains("at most 250ms"), "{e}");
        let bad = Thresholds {
            warning: 0.9,
            ..Thresholds::default()
        };
        let e = refused(MemoryConfig::default().thresholds(bad), None);
        assert!(e.contains("out of order"), "{e}");
        let e = refused(
            MemoryConfig::default().leaks(LeakDetection {
                factor: 0.5,
                ..LeakDetection::default()
            }),
            None,
        );
        assert!(e.contains("leak factor"), "{e}");
    }

    #[test]
    fn an_unreadable_limit_falls_back_to_the_configured_one_and_unreadable_memory_is_ungoverned() {
        let blind = |rss: bool| -> Arc<dyn MemoryProbe> {
            Arc::new(Fixed {
                rss: if rss { Ok(1) } else { Err(unreadable()) },
                group: Err(unreadable()),
                machine: Err(unreadable()),
            })
        };
        let resolved = resolve(MemoryConfig::default().limit(GIB), blind(true)).unwrap();
        assert_eq!(resolved.unwrap().limit, GIB);
        assert!(
            resolve(MemoryConfig::default(), blind(true))
                .unwrap()
                .is_none()
        );
        assert!(
            resolve(MemoryConfig::default().limit(GIB), blind(false))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn human_figures() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * GIB), "3.0 GiB");
    }
}
