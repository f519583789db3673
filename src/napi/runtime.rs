//! The runtimes sluice runs on (workers at a lower priority, one accept thread), tracing, and the
//! thread CPU clock for benchmarks.

use super::*;

/// Lowers the calling thread's priority: its niceness raised by `nice`, and its policy
/// `SCHED_BATCH` (Linux: both apply to the calling thread only and need no privilege; a failure
/// leaves the default). A batch thread never preempts another when it wakes up, only at the
/// scheduler's tick: with as many workers as cores, a worker woken by a broadcast (or its
/// second shard) would otherwise take the core from the JS thread that woke it, in the middle
/// of the `broadcast()` call. Measured on 2 cores, lobby, 2 workers at nice 5 without it: the
/// call's p99 3-8 ms, all of it waiting in the run queue (two runs of 60 calls, 3.5 ms each of
/// the slow ones); with it 0.1 ms in 3 runs of 4 (README, Performance).
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: plain syscall on this thread's own id; no memory is passed.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "worker nice not set");
        }
        let param = libc::sched_param { sched_priority: 0 };
        // The system call, not libc's wrapper: musl's `sched_setscheduler` does nothing but fail
        // with ENOSYS (it holds that the call is per process in POSIX and per thread in Linux).
        // SAFETY: pid 0 is the calling thread; `param` is a local that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0 as libc::pid_t,
                libc::SCHED_BATCH,
                &param as *const libc::sched_param,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "worker SCHED_BATCH not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The server's two runtimes; they live and stop together.
pub(crate) struct Runtimes {
    /// Connections, fan-out, timers: `threads` workers at `workerNice`.
    pub(crate) workers: tokio::runtime::Runtime,
    /// The listener and handshakes: one thread at normal priority.
    pub(crate) accept: tokio::runtime::Runtime,
}

impl Runtimes {
    /// `threads` workers at `workerNice`, and the accept thread.
    pub(crate) fn new(config: &Config) -> Result<Self> {
        Ok(Self {
            workers: build_runtime("sluice-rt", config.threads, config.worker_nice)?,
            accept: build_runtime("sluice-accept", 1, 0)?,
        })
    }
}

/// A multi-thread runtime of `threads` workers named `name`, each niced by `nice`.
fn build_runtime(name: &str, threads: usize, nice: i32) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .on_thread_start(move || lower_thread_priority(nice))
        .enable_all()
        .build()
        .map_err(|e| Error::from_reason(format!("cannot start the {name} runtime: {e}")))
}

static TRACING: Once = Once::new();

/// Rust-side logs go to stderr through `tracing` when `SLUICE_LOG` is set (an `EnvFilter`
/// directive such as `debug` or `sluice=trace`); off otherwise.
pub(crate) fn init_tracing() {
    TRACING.call_once(|| {
        if let Ok(directive) = std::env::var("SLUICE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(directive))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// CPU time consumed by the calling thread, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`). A
/// diagnostic clock for benchmarks: on the JS thread it shows what a call cost that thread,
/// unlike wall time, which includes being preempted by sluice's own threads.
#[napi]
// Called from JavaScript only: napi registers it outside `cargo test` builds.
#[cfg_attr(test, allow(dead_code))]
pub fn thread_cpu_time_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
