//! Lagging connections: how much the kernel may hold for a connection whose link is slower than
//! its traffic.
//!
//! Conflation keys and `ttl` act on frames in sluice's queue. What the kernel already holds is out
//! of their reach and only gets older: the socket's unsent bytes, and the bytes sent but not yet
//! acknowledged, which on a slow mobile link wait in a bottleneck queue of the network. Measured
//! on an 80 kbit/s link (bench scenario `mobile`), the kernel held 110 to 250 KiB per connection,
//! 11 to 25 s of that link: `TCP_NOTSENT_LOWAT` (`kernelUnsentLimit`) bounds only the unsent part,
//! and the congestion window lets the rest pile up in the network's queue.
//!
//! **The rule.** A connection is *lagging* while the kernel holds more than
//! [`LAGGING_ENTER_MS`] of its data beyond one minimum round trip (Linux: `SIOCOUTQ` for the bytes
//! held, the minimum RTT from `TCP_INFO`):
//!
//! ```text
//! held time = SIOCOUTQ / delivery rate - min RTT
//! delivery rate = bytes acknowledged (written - SIOCOUTQ) over the last RATE_WINDOW or more
//! ```
//!
//! While it is lagging, the writer hands the kernel one frame at a time, and only while the
//! kernel holds less than `laggingKernelLimit` bytes ([`crate::config::DEFAULT_LAGGING_KERNEL_LIMIT`]);
//! everything else waits in the outbox, where a newer value of the same key replaces it and a
//! deadline can still skip it, and where `bufferedAmount` and the policy see it. It stops lagging
//! when the held time falls below [`LAGGING_LEAVE_MS`] or the kernel has nothing left (the link
//! caught up). The minimum RTT is subtracted so that a long but fast path (satellite, another
//! continent) is not taken for a slow one.
//!
//! | state | looks at the kernel | becomes the other state when | the writer |
//! |-------|---------------------|------------------------------|------------|
//! | keeping up | after a refused write, or every [`SAMPLE_EVERY_BYTES`] written; at most every [`SAMPLE_INTERVAL`] | held > `laggingKernelLimit` and held time > `LAGGING_ENTER_MS` with 2 rates in a row | as before: batches of up to `MAX_BATCH_BYTES`, bounded by `kernelUnsentLimit` |
//! | lagging | before every write | nothing held, or held time < `LAGGING_LEAVE_MS` with 2 rates in a row | one frame per write, only while held < `laggingKernelLimit`; otherwise waits [`MIN_WAIT`]..[`MAX_WAIT`] (the time the link needs to drain the excess) |
//!
//! **Cost.** A connection that keeps up costs one `SIOCOUTQ` per 16 KiB written (the kernel
//! holds little for it, so `TCP_INFO` is not read). A lagging one costs both system calls per
//! frame and one timer per wait. Its throughput is at most `laggingKernelLimit` plus one frame per
//! round trip: below the link's rate only when a round trip carries more than that (a fast link),
//! and then the held time stays small and the connection leaves the state again.
//!
//! **What it does not cover.** A client that reads slowly over a fast link keeps the kernel's
//! queue short in time (the bytes are acknowledged as soon as its receive buffer takes them); what
//! waits in that receive buffer is beyond any server's reach.
//!
//! [`LagWatch`] is plain state with no I/O; [`KernelSample::read`] reads the kernel; [`WriterLag`]
//! is what the connection's writer holds. Counters: `metrics().laggingEvents` and
//! `metrics().lagging` (plain statistics: `Relaxed`, like every counter in `metrics.rs`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// Held time above which a connection becomes lagging: 250 ms. A client that keeps up has at most
/// a round trip's worth of data in flight, which the rule subtracts, plus what a burst adds for a
/// few ms on a fast link; a mobile link under 10x its rate piles up seconds.
pub const LAGGING_ENTER_MS: u64 = 250;
/// Held time below which a lagging connection keeps up again: 50 ms, a fifth of the threshold
/// above, so that a connection held near `laggingKernelLimit` on a slow link (0.4 s for 4 KiB at
/// 80 kbit/s) stays in the state instead of flapping.
pub const LAGGING_LEAVE_MS: u64 = 50;
/// A connection that keeps up is looked at once per 16 KiB written (and after a refused write):
/// on a slow link the kernel takes its congestion window's worth (100+ KiB) before it refuses
/// anything, all of which the link then needs seconds to deliver.
pub const SAMPLE_EVERY_BYTES: usize = 16 * 1024;
/// Samples of a connection that keeps up are at least this far apart.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// The delivery rate is the bytes acknowledged over at least this long: acknowledgements come in
/// bursts (delayed and aggregated ACKs), so a shorter window would see rates the link does not
/// have. Entering or leaving the state takes two such rates in a row.
pub const RATE_WINDOW: Duration = Duration::from_millis(200);
/// Shortest and longest wait of a lagging connection's writer before it looks at the kernel again.
pub const MIN_WAIT: Duration = Duration::from_millis(10);
pub const MAX_WAIT: Duration = Duration::from_millis(250);

/// The kernel's figures for one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSample {
    /// Bytes written and not yet acknowledged by the peer (`SIOCOUTQ`: unsent + in flight).
    pub held: usize,
    /// Bytes the peer has acknowledged since the writer started (written - held).
    pub acked: u64,
    /// Minimum round trip seen, µs; `None` when unknown or not read.
    pub min_rtt_us: Option<u64>,
}

impl KernelSample {
    /// Reads `SIOCOUTQ`, and the minimum RTT from `TCP_INFO` too when the kernel holds more than
    /// `rtt_above` bytes (Linux); `written`: bytes the writer handed to the kernel so far. `None`
    /// elsewhere or on error.
    pub fn read(sock: &tokio::net::TcpStream, written: u64, rtt_above: usize) -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = sock.as_raw_fd();
            let mut held: libc::c_int = 0;
            // SAFETY: `fd` is the live socket owned by `sock`; TIOCOUTQ (== SIOCOUTQ) writes one
            // c_int through the pointer, which outlives the call.
            if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut held) } != 0 {
                return None;
            }
            let held = held.max(0) as usize;
            let mut s = KernelSample {
                held,
                acked: written.saturating_sub(held as u64),
                min_rtt_us: None,
            };
            if held <= rtt_above {
                return Some(s);
            }
            // SAFETY: tcp_info is plain integers, for which all-zero is a valid value.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `info`, a local that outlives the
            // call. An older kernel fills fewer fields: the others stay 0, read as unknown below.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    &mut info as *mut libc::tcp_info as *mut libc::c_void,
                    &mut len,
                )
            };
            if r == 0 {
                // ~0 (u32::MAX) until the first RTT sample.
                s.min_rtt_us = match info.tcpi_min_rtt {
                    0 | u32::MAX => None,
                    v => Some(v as u64),
                };
            }
            Some(s)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (sock, written, rtt_above);
            None
        }
    }
}

/// How long `held` bytes take to deliver at `rate` bytes/s, beyond one minimum round trip, in µs.
pub fn held_time_us(held: usize, rate: u64, min_rtt_us: Option<u64>) -> u64 {
    let drain = (held as u128 * 1_000_000 / rate.max(1) as u128).min(u64::MAX as u128) as u64;
    drain.saturating_sub(min_rtt_us.unwrap_or(0))
}

/// A change of state, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Entered,
    Left,
}

/// One connection's lagging state, owned by its writer task.
#[derive(Debug)]
pub struct LagWatch {
    /// `laggingKernelLimit`; 0: the rule is off.
    limit: usize,
    lagging: bool,
    /// The kernel refused a write since the last sample.
    refused: bool,
    /// Bytes handed to the kernel since the last sample.
    written: usize,
    /// Rates in a row that found the connection late (keeping up) or caught up (lagging).
    streak: u8,
    next_sample: Option<Instant>,
    /// Where the current rate window started: (when, bytes acknowledged then).
    window: Option<(Instant, u64)>,
    /// The latest rate measured, bytes/s (0: none yet): how long a lagging writer waits.
    last_rate: u64,
}

impl LagWatch {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            lagging: false,
            refused: false,
            written: 0,
            streak: 0,
            next_sample: None,
            window: None,
            last_rate: 0,
        }
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging
    }

    /// The most the kernel may hold while lagging; also what it must hold to be late.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The kernel refused (part of) a write: the connection may be lagging.
    pub fn refused(&mut self) {
        self.refused = self.limit > 0;
    }

    /// The kernel took `n` bytes. The first write opens the first rate window, so that the first
    /// sample has a rate already.
    pub fn wrote(&mut self, n: usize) {
        if self.limit > 0 {
            self.written = self.written.saturating_add(n);
            if self.window.is_none() {
                self.window = Some((Instant::now(), 0));
            }
        }
    }

    /// Whether anything could make the writer look at the kernel now (no clock read).
    pub fn may_sample(&self) -> bool {
        self.lagging || self.refused || self.written >= SAMPLE_EVERY_BYTES
    }

    /// Whether the writer should read the kernel's figures before its next write.
    pub fn wants_sample(&self, now: Instant) -> bool {
        self.lagging || (self.may_sample() && self.next_sample.is_none_or(|t| now >= t))
    }

    /// Takes in a sample (`None`: the kernel could not tell) and returns the state change, if any.
    pub fn update(&mut self, now: Instant, s: Option<KernelSample>) -> Option<Change> {
        self.refused = false;
        self.written = 0;
        self.next_sample = Some(now + SAMPLE_INTERVAL);
        let s = s?;
        if self.lagging && s.held == 0 {
            return Some(self.set(false));
        }
        // A new rate once the window is long enough; the first sample only opens a window.
        let rate = match self.window {
            Some((t0, a0)) if now.duration_since(t0) >= RATE_WINDOW => {
                let us = now.duration_since(t0).as_micros().max(1);
                self.window = Some((now, s.acked));
                let r = (s.acked.saturating_sub(a0) as u128 * 1_000_000 / us) as u64;
                self.last_rate = r;
                Some(r)
            }
            Some(_) => None,
            None => {
                self.window = Some((now, s.acked));
                None
            }
        };
        if !self.lagging && s.held <= self.limit {
            self.streak = 0;
            return None;
        }
        let rate = rate?;
        let t = held_time_us(s.held, rate, s.min_rtt_us);
        let towards_other_state = if self.lagging {
            t < LAGGING_LEAVE_MS * 1000
        } else {
            t > LAGGING_ENTER_MS * 1000
        };
        if !towards_other_state {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak >= 2 {
            return Some(self.set(!self.lagging));
        }
        // Look again at the next chance: what led here may not come back soon.
        self.refused = true;
        None
    }

    fn set(&mut self, lagging: bool) -> Change {
        self.lagging = lagging;
        self.streak = 0;
        if lagging {
            Change::Entered
        } else {
            Change::Left
        }
    }

    /// How long a lagging connection's writer waits before it writes again, given the latest
    /// sample; `None`: write now.
    pub fn wait(&self, s: Option<KernelSample>) -> Option<Duration> {
        let s = s?;
        if !self.lagging || s.held < self.limit {
            return None;
        }
        let excess = s.held - self.limit + 1;
        let d = match self.last_rate {
            0 => MAX_WAIT,
            r => Duration::from_micros(held_time_us(excess, r, None)),
        };
        Some(d.clamp(MIN_WAIT, MAX_WAIT))
    }
}

/// A writer's handle on the rule: its [`LagWatch`], the bytes it wrote, and the server's
/// counters. Owned by the writer task, so the state needs no synchronisation; dropping it (the
/// writer ends) takes a lagging connection out of `metrics().lagging`.
pub struct WriterLag<'a> {
    watch: LagWatch,
    written: u64,
    metrics: &'a Metrics,
}

impl<'a> WriterLag<'a> {
    pub fn new(limit: usize, metrics: &'a Metrics) -> Self {
        Self {
            watch: LagWatch::new(limit),
            written: 0,
            metrics,
        }
    }

    pub fn is_lagging(&self) -> bool {
        self.watch.is_lagging()
    }

    /// The kernel refused (part of) a write.
    pub fn refused(&mut self) {
        self.watch.refused();
    }

    /// The kernel took `n` bytes.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.watch.wrote(n);
    }

    /// Before a write: reads the kernel when the rule asks for it, and returns how long to wait
    /// before writing, if at all. Costs no system call and no clock read for a connection that
    /// keeps up, had no write refused and wrote less than `SAMPLE_EVERY_BYTES` since it was last
    /// looked at; then one `SIOCOUTQ`, and `TCP_INFO` only if the kernel holds more than the limit.
    pub fn before_write(&mut self, sock: &tokio::net::TcpStream) -> Option<Duration> {
        if !self.watch.may_sample() {
            return None;
        }
        let now = Instant::now();
        if !self.watch.wants_sample(now) {
            return None;
        }
        let s = KernelSample::read(sock, self.written, self.watch.limit());
        match self.watch.update(now, s) {
            Some(Change::Entered) => {
                self.metrics.lagging_events.fetch_add(1, Relaxed);
                self.metrics.lagging.fetch_add(1, Relaxed);
            }
            Some(Change::Left) => {
                self.metrics.lagging.fetch_sub(1, Relaxed);
            }
            None => {}
        }
        self.watch.wait(s)
    }
}

impl Drop for WriterLag<'_> {
    fn drop(&mut self) {
        if self.watch.is_lagging() {
            self.metrics.lagging.fetch_sub(1, Relaxed);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;
    const MS: Duration = Duration::from_millis(1);

    fn s(held: usize, acked: u64, min_rtt_us: Option<u64>) -> Option<KernelSample> {
        Some(KernelSample {
            held,
            acked,
            min_rtt_us,
        })
    }

    /// A connection on a 10 KB/s link with `held` bytes in the kernel, sampled every 200 ms
    /// (from `t`), `n` times; returns the last change.
    fn slow_link(
        w: &mut LagWatch,
        t: &mut Instant,
        acked: &mut u64,
        held: usize,
        n: usize,
    ) -> Option<Change> {
        let mut last = None;
        for _ in 0..n {
            w.refused();
            *t += RATE_WINDOW;
            *acked += 2_000;
            if let Some(c) = w.update(*t, s(held, *acked, Some(7))) {
                last = Some(c);
            }
        }
        last
    }

    #[test]
    fn held_time_subtracts_one_minimum_round_trip() {
        // 120 KiB at 10 KB/s: 12.3 s.
        assert_eq!(held_time_us(120 * KIB, 10_000, None), 12_288_000);
        // A satellite path: 750 KB in flight at 1.25 MB/s with a 600 ms round trip is not late.
        assert_eq!(held_time_us(750_000, 1_250_000, Some(600_000)), 0);
        // Nothing acknowledged: as late as can be.
        assert!(held_time_us(KIB, 0, None) > 1_000_000_000);
    }

    /// The first row of the module doc's table.
    #[test]
    fn keeping_up_is_looked_at_after_a_refusal_or_16_kib() {
        let t0 = Instant::now();
        let mut w = LagWatch::new(4 * KIB);
        assert!(!w.may_sample() && !w.wants_sample(t0));
        w.wrote(SAMPLE_EVERY_BYTES - 1);
        assert!(!w.may_sample());
        w.wrote(1);
        assert!(w.wants_sample(t0));
        assert_eq!(w.update(t0, s(0, 16 * KIB as u64, None)), None);
        assert!(!w.may_sample(), "a sample resets the byte count");
        w.refused();
        assert!(w.may_sample());
        assert!(!w.wants_sample(t0 + 50 * MS), "samples are spaced");
        assert!(w.wants_sample(t0 + SAMPLE_INTERVAL));
        // A fast client momentarily behind: 64 KiB held, 4 MB acknowledged per 200 ms.
        let mut t = t0;
        let mut acked = 16 * KIB as u64;
        for _ in 0..3 {
            w.refused();
            t += RATE_WINDOW;
            acked += 4_000_000;
            assert_eq!(w.update(t, s(64 * KIB, acked, Some(50))), None);
        }
        // Holding no more than the limit is never late, whatever the rate (here: none at all).
        for _ in 0..3 {
            w.refused();
            t += RATE_WINDOW;
            assert_eq!(w.update(t, s(4 * KIB, acked, None)), None);
        }
        assert!(!w.is_lagging());
    }

    /// Both rows' changes of state.
    #[test]
    fn enters_after_two_late_rates_and_leaves_when_caught_up() {
        let mut t = Instant::now();
        let mut acked = 0;
        let mut w = LagWatch::new(4 * KIB);
        // The first sample opens the rate window; the first rate (10 KB/s with 120 KiB held:
        // 12 s) is one late rate, not enough; the second enters.
        w.refused();
        assert_eq!(w.update(t, s(120 * KIB, acked, Some(7))), None);
        assert_eq!(slow_link(&mut w, &mut t, &mut acked, 120 * KIB, 1), None);
        assert!(!w.is_lagging());
        assert!(
            w.wants_sample(t + SAMPLE_INTERVAL),
            "it asks for the next sample by itself"
        );
        assert_eq!(
            slow_link(&mut w, &mut t, &mut acked, 118 * KIB, 1),
            Some(Change::Entered)
        );
        assert!(w.is_lagging());
        // A sample inside the rate window decides nothing.
        assert_eq!(w.update(t + 10 * MS, s(KIB, acked, Some(7))), None);
        // Lagging: a sample before every write. Held near the limit on the slow link (0.4 s) it
        // stays...
        assert!(w.wants_sample(t));
        assert_eq!(slow_link(&mut w, &mut t, &mut acked, 4 * KIB, 5), None);
        assert!(w.is_lagging());
        // ...with nothing held it leaves at once...
        assert_eq!(w.update(t, s(0, acked, Some(7))), Some(Change::Left));
        assert!(!w.is_lagging());
        // ...and on a link that became fast (1 MB/s) after two rates.
        assert_eq!(
            slow_link(&mut w, &mut t, &mut acked, 64 * KIB, 3),
            Some(Change::Entered)
        );
        let mut fast = |w: &mut LagWatch, t: &mut Instant, acked: &mut u64| {
            *t += RATE_WINDOW;
            *acked += 200_000;
            w.update(*t, s(6 * KIB, *acked, Some(20_000)))
        };
        assert_eq!(fast(&mut w, &mut t, &mut acked), None);
        assert_eq!(fast(&mut w, &mut t, &mut acked), Some(Change::Left));
        // An early rate in between starts the count again.
        let mut w = LagWatch::new(4 * KIB);
        w.update(t, s(0, acked, None));
        slow_link(&mut w, &mut t, &mut acked, 120 * KIB, 1);
        slow_link(&mut w, &mut t, &mut acked, KIB, 1);
        assert_eq!(slow_link(&mut w, &mut t, &mut acked, 120 * KIB, 1), None);
        // A failed read decides nothing.
        assert_eq!(w.update(t, None), None);
        assert!(!w.is_lagging());
    }

    #[test]
    fn a_lagging_writer_waits_while_the_kernel_holds_the_limit() {
        let mut t = Instant::now();
        let mut acked = 0;
        let mut w = LagWatch::new(4 * KIB);
        assert_eq!(w.wait(s(100 * KIB, 0, None)), None, "not lagging: no wait");
        w.update(t, s(0, 0, None));
        slow_link(&mut w, &mut t, &mut acked, 100 * KIB, 2);
        assert!(w.is_lagging());
        assert_eq!(w.wait(s(4 * KIB - 1, acked, None)), None);
        // 1 byte over at 10 KB/s: 100 µs, raised to the shortest wait.
        assert_eq!(w.wait(s(4 * KIB, acked, None)), Some(MIN_WAIT));
        // 1 KiB over: ~102 ms.
        assert_eq!(
            w.wait(s(5 * KIB, acked, None)),
            Some(Duration::from_micros(102_500))
        );
        // Far over: the longest wait; no sample: no wait.
        assert_eq!(w.wait(s(100 * KIB, acked, None)), Some(MAX_WAIT));
        assert_eq!(w.wait(None), None);
    }

    #[test]
    fn off_when_the_limit_is_zero() {
        let t = Instant::now();
        let mut w = LagWatch::new(0);
        w.refused();
        w.wrote(10 * SAMPLE_EVERY_BYTES);
        assert!(!w.may_sample() && !w.wants_sample(t));
    }
}
