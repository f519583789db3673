//! Lagging connections: how much the kernel may hold for a connection whose network path queues
//! its bytes, as a slow mobile link does.
//!
//! Conflation keys and `ttl` act on frames in sluice's queue. What the kernel already holds is out
//! of their reach and only gets older: the socket's unsent bytes, and the bytes sent but not yet
//! acknowledged, which on a slow link wait in a bottleneck queue of the network. Measured on an
//! 80 kbit/s link (bench scenario `mobile`), the kernel held 110 to 250 KiB per connection, 11 to
//! 25 s of that link: `TCP_NOTSENT_LOWAT` (`kernelUnsentLimit`) bounds only the unsent part, and
//! the congestion window lets the rest pile up in the network's queue.
//!
//! **The rule.** A connection is *lagging* while the kernel holds more than `laggingKernelLimit`
//! bytes for it (`SIOCOUTQ`) and its path queues them: its smoothed round trip exceeds its minimum
//! round trip by more than [`LAGGING_ENTER_MS`] (Linux `TCP_INFO`):
//!
//! ```text
//! queueing delay = smoothed RTT - minimum RTT
//! ```
//!
//! While it is lagging, the writer hands the kernel one frame at a time, and only while the
//! kernel holds less than `laggingKernelLimit` bytes ([`crate::core::config::DEFAULT_LAGGING_KERNEL_LIMIT`]);
//! everything else waits in the outbox, where a newer value of the same key replaces it and a
//! deadline can still skip it, and where `bufferedAmount` and the policy see it. It stops lagging
//! when the queueing delay falls below [`LAGGING_LEAVE_MS`] or the kernel has nothing left (the
//! link caught up).
//!
//! Why the queueing delay and not the bytes held, or the time they would take at the measured
//! rate: a client whose *reader* is slow or descheduled for a moment (a loaded machine, a
//! garbage collection) closes its receive window; the kernel then holds unsent bytes and
//! acknowledges little, but nothing waits in the network and the round trip stays short. There
//! the kernel's buffering absorbs a burst the client will read a moment later, and moving that
//! backlog into sluice's queue would only bring `maxBufferedAmount` closer. Subtracting the
//! minimum round trip keeps a long but fast path (satellite, another continent) out of the rule.
//!
//! | state | looks at the kernel | becomes the other state when | the writer |
//! |-------|---------------------|------------------------------|------------|
//! | keeping up | after a refused write, or every [`SAMPLE_EVERY_BYTES`] written; at most every [`SAMPLE_INTERVAL`] | held > `laggingKernelLimit` and queueing delay > `LAGGING_ENTER_MS`, on 2 samples in a row | as before: batches of up to `MAX_BATCH_BYTES`, bounded by `kernelUnsentLimit` |
//! | lagging | before every write | nothing held and nothing queued, or queueing delay < `LAGGING_LEAVE_MS` | one frame per write, only while held < `laggingKernelLimit`; otherwise waits [`MIN_WAIT`]..[`MAX_WAIT`] (the time the link needs to drain the excess at its delivery rate) |
//!
//! **Cost.** A connection that keeps up costs one `SIOCOUTQ` per 16 KiB written (the kernel
//! holds little for it, so `TCP_INFO` is not read). A lagging one costs both system calls per
//! frame and one timer per wait. While lagging, its throughput is at most `laggingKernelLimit`
//! plus one frame per round trip; that is below the link's rate only on a path whose round trip
//! carries more, and there the queue drains, the delay falls and the connection leaves the state.
//! These calls are made by whoever writes to the connection: its writer, or the fan-out
//! writing inline to a connection whose writer was idle (`Conn::kick`), so a keeping-up
//! connection's `SIOCOUTQ` is sometimes paid on the fan-out's thread (0.25 µs per message in the
//! lobby's profile); a lagging one asks for a wait there, and the fan-out leaves it to its task.
//!
//! **What it does not cover.** A client that reads slowly over a fast link: the bytes it has not
//! read wait in its own receive buffer and the server's unsent queue (`kernelUnsentLimit`), not in
//! the network.
//!
//! [`LagWatch`] is plain state with no I/O; [`KernelSample::read`] reads the kernel; [`WriterLag`]
//! is what the connection's writer holds. Counters: `metrics().laggingEvents` and
//! `metrics().lagging` (plain statistics: `Relaxed`, like every counter in `metrics.rs`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::metrics::Metrics;

/// Queueing delay above which a connection becomes lagging: 250 ms. Wi-Fi and LTE add tens of ms
/// under load; a mobile link under 10x its rate adds seconds, all of it in what the kernel holds.
pub(crate) const LAGGING_ENTER_MS: u64 = 250;
/// Queueing delay below which a lagging connection keeps up again: 50 ms, a fifth of the threshold
/// above, so that a connection held at `laggingKernelLimit` on a slow link (0.4 s for 4 KiB at
/// 80 kbit/s) stays in the state instead of flapping.
pub(crate) const LAGGING_LEAVE_MS: u64 = 50;
/// A connection that keeps up is looked at once per 16 KiB written (and after a refused write):
/// on a slow link the kernel takes its congestion window's worth (100+ KiB) before it refuses
/// anything, all of which the link then needs seconds to deliver.
pub(crate) const SAMPLE_EVERY_BYTES: usize = 16 * 1024;
/// Samples of a connection that keeps up are at least this far apart, and entering takes two:
/// one late round trip may be a single delayed acknowledgement.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest and longest wait of a lagging connection's writer before it looks at the kernel again.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(10);
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(250);

/// The kernel's figures for one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelSample {
    /// Bytes written and not yet acknowledged by the peer (`SIOCOUTQ`: unsent + in flight).
    pub(crate) held: usize,
    /// Smoothed and minimum round trip, µs; `None` when unknown or not read.
    pub(crate) srtt_us: Option<u64>,
    pub(crate) min_rtt_us: Option<u64>,
    /// The kernel's latest delivery-rate sample, bytes/s (0: unknown): only how long to wait.
    pub(crate) delivery_rate: u64,
}

impl KernelSample {
    /// Smoothed RTT minus minimum RTT, µs: how long the path queues this connection's bytes.
    pub(crate) fn queueing_us(&self) -> Option<u64> {
        Some(self.srtt_us?.saturating_sub(self.min_rtt_us?))
    }

    /// Reads `SIOCOUTQ`, and `TCP_INFO` too when the kernel holds more than `rtt_above` bytes
    /// (Linux); `None` elsewhere or on error.
    pub(crate) fn read(sock: &tokio::net::TcpStream, rtt_above: usize) -> Option<Self> {
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
            let mut s = KernelSample {
                held: held.max(0) as usize,
                ..Default::default()
            };
            if s.held <= rtt_above {
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
                let us = |v: u32| (v != 0 && v != u32::MAX).then_some(v as u64);
                s.srtt_us = us(info.tcpi_rtt);
                // ~0 (u32::MAX) until the first RTT sample.
                s.min_rtt_us = us(info.tcpi_min_rtt);
                s.delivery_rate = info.tcpi_delivery_rate;
            }
            Some(s)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (sock, rtt_above);
            None
        }
    }
}

/// A change of state, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Entered,
    Left,
}

/// One connection's lagging state, in its writer state (changed only by whoever holds that).
#[derive(Debug)]
pub(crate) struct LagWatch {
    /// `laggingKernelLimit`; 0: the rule is off.
    limit: usize,
    lagging: bool,
    /// The kernel refused a write since the last sample.
    refused: bool,
    /// Bytes handed to the kernel since the last sample.
    written: usize,
    /// Samples in a row that found the connection late, while keeping up.
    late: u8,
    next_sample: Option<Instant>,
}

impl LagWatch {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            lagging: false,
            refused: false,
            written: 0,
            late: 0,
            next_sample: None,
        }
    }

    pub(crate) fn is_lagging(&self) -> bool {
        self.lagging
    }

    /// The most the kernel may hold while lagging; also what it must hold to be late.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The kernel refused (part of) a write: the connection may be lagging.
    pub(crate) fn refused(&mut self) {
        self.refused = self.limit > 0;
    }

    /// The kernel took `n` bytes.
    pub(crate) fn wrote(&mut self, n: usize) {
        if self.limit > 0 {
            self.written = self.written.saturating_add(n);
        }
    }

    /// Whether anything could make the writer look at the kernel now (no clock read).
    pub(crate) fn may_sample(&self) -> bool {
        self.lagging || self.refused || self.written >= SAMPLE_EVERY_BYTES
    }

    /// Whether the writer should read the kernel's figures before its next write.
    pub(crate) fn wants_sample(&self, now: Instant) -> bool {
        self.lagging || (self.may_sample() && self.next_sample.is_none_or(|t| now >= t))
    }

    /// Takes in a sample (`None`: the kernel could not tell) and returns the state change, if any.
    /// `backlog`: frames wait for this connection in sluice (outbox or writer's batch).
    pub(crate) fn update(
        &mut self,
        now: Instant,
        s: Option<KernelSample>,
        backlog: bool,
    ) -> Option<Change> {
        self.refused = false;
        self.written = 0;
        self.next_sample = Some(now + SAMPLE_INTERVAL);
        let s = s?;
        if self.lagging {
            // The kernel emptied while frames still waited (a writer that ran late on a busy
            // machine) is no sign that the link caught up.
            let caught_up = (s.held == 0 && !backlog)
                || s.queueing_us().is_some_and(|q| q < LAGGING_LEAVE_MS * 1000);
            if caught_up {
                self.lagging = false;
                self.late = 0;
                return Some(Change::Left);
            }
            return None;
        }
        let late =
            s.held > self.limit && s.queueing_us().is_some_and(|q| q > LAGGING_ENTER_MS * 1000);
        if !late {
            self.late = 0;
            return None;
        }
        self.late += 1;
        if self.late >= 2 {
            self.lagging = true;
            self.late = 0;
            return Some(Change::Entered);
        }
        // Look again at the next chance: what led here may not come back soon.
        self.refused = true;
        None
    }

    /// How long a lagging connection's writer waits before it writes again, given the latest
    /// sample; `None`: write now.
    pub(crate) fn wait(&self, s: Option<KernelSample>) -> Option<Duration> {
        let s = s?;
        if !self.lagging || s.held < self.limit {
            return None;
        }
        let excess = (s.held - self.limit + 1) as u128;
        let d = match s.delivery_rate {
            0 => MAX_WAIT,
            r => {
                Duration::from_micros((excess * 1_000_000 / r as u128).min(u64::MAX as u128) as u64)
            }
        };
        Some(d.clamp(MIN_WAIT, MAX_WAIT))
    }
}

/// A writer's handle on the rule: its [`LagWatch`] and the server's counters. Kept in the
/// connection's writer state, changed only by whoever holds it; dropping it (the writer ends)
/// takes a lagging connection out of `metrics().lagging`.
pub(crate) struct WriterLag {
    watch: LagWatch,
    metrics: Arc<Metrics>,
}

impl WriterLag {
    pub(crate) fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            watch: LagWatch::new(limit),
            metrics,
        }
    }

    pub(crate) fn is_lagging(&self) -> bool {
        self.watch.is_lagging()
    }

    /// The kernel refused (part of) a write.
    pub(crate) fn refused(&mut self) {
        self.watch.refused();
    }

    /// The kernel took `n` bytes.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.watch.wrote(n);
    }

    /// Before a write: reads the kernel when the rule asks for it, and returns how long to wait
    /// before writing, if at all. `backlog`: frames wait in the outbox or the writer's batch. Costs no system call and no clock read for a connection that
    /// keeps up, had no write refused and wrote less than `SAMPLE_EVERY_BYTES` since it was last
    /// looked at; then one `SIOCOUTQ`, and `TCP_INFO` only if the kernel holds more than the limit.
    pub(crate) fn before_write(
        &mut self,
        sock: &tokio::net::TcpStream,
        backlog: bool,
    ) -> Option<Duration> {
        if !self.watch.may_sample() {
            return None;
        }
        let now = Instant::now();
        if !self.watch.wants_sample(now) {
            return None;
        }
        let rtt_above = if self.watch.is_lagging() {
            0
        } else {
            self.watch.limit()
        };
        let s = KernelSample::read(sock, rtt_above);
        match self.watch.update(now, s, backlog) {
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

impl Drop for WriterLag {
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
    const MS: u64 = 1000;

    /// `held` bytes, smoothed RTT `srtt` ms over a minimum of `min` ms, `rate` bytes/s.
    fn s(held: usize, srtt: u64, min: u64, rate: u64) -> Option<KernelSample> {
        Some(KernelSample {
            held,
            srtt_us: Some(srtt * MS),
            min_rtt_us: Some(min * MS),
            delivery_rate: rate,
        })
    }

    /// A watch that is lagging (an 80 kbit/s link with 120 KiB queued, sampled twice).
    fn lagging_watch(t: Instant) -> LagWatch {
        let mut w = LagWatch::new(4 * KIB);
        for i in 0..2 {
            w.refused();
            w.update(
                t + SAMPLE_INTERVAL * i,
                s(120 * KIB, 6_000, 0, 10_000),
                false,
            );
        }
        assert!(w.is_lagging());
        w
    }

    #[test]
    fn queueing_is_the_round_trip_beyond_the_minimum() {
        assert_eq!(s(KIB, 1_500, 1, 0).unwrap().queueing_us(), Some(1_499 * MS));
        // A satellite path: a 600 ms round trip that is its minimum queues nothing.
        assert_eq!(s(KIB, 610, 600, 0).unwrap().queueing_us(), Some(10 * MS));
        let unknown = KernelSample {
            held: KIB,
            ..Default::default()
        };
        assert_eq!(unknown.queueing_us(), None);
    }

    /// The first row of the module doc's table.
    #[test]
    fn keeping_up_is_looked_at_after_a_refusal_or_16_kib_and_enters_on_two_late_samples() {
        let t0 = Instant::now();
        let mut w = LagWatch::new(4 * KIB);
        assert!(!w.may_sample() && !w.wants_sample(t0));
        w.wrote(SAMPLE_EVERY_BYTES - 1);
        assert!(!w.may_sample());
        w.wrote(1);
        assert!(w.wants_sample(t0));
        assert_eq!(w.update(t0, s(0, 1, 1, 0), false), None);
        assert!(!w.may_sample(), "a sample resets the byte count");
        w.refused();
        assert!(w.may_sample());
        assert!(
            !w.wants_sample(t0 + SAMPLE_INTERVAL / 2),
            "samples are spaced"
        );
        let t1 = t0 + SAMPLE_INTERVAL;
        assert!(w.wants_sample(t1));
        // A reader that stalls on a fast link: 64 KiB held, nothing acknowledged, but the round
        // trip stays short. Never late.
        for _ in 0..3 {
            w.refused();
            assert_eq!(w.update(t1, s(64 * KIB, 1, 1, 0), false), None);
        }
        // Held no more than the limit: never late, whatever the delay.
        for _ in 0..3 {
            w.refused();
            assert_eq!(w.update(t1, s(4 * KIB, 5_000, 1, 0), false), None);
        }
        // A slow link: one late sample is not enough; it asks for the next one by itself.
        assert_eq!(w.update(t1, s(120 * KIB, 1_500, 0, 10_000), false), None);
        let t2 = t1 + SAMPLE_INTERVAL;
        assert!(w.wants_sample(t2));
        // An early sample in between starts the count again...
        assert_eq!(w.update(t2, s(120 * KIB, 100, 0, 10_000), false), None);
        w.refused();
        assert_eq!(w.update(t2, s(120 * KIB, 1_500, 0, 10_000), false), None);
        assert!(!w.is_lagging());
        // ...and two late ones in a row enter.
        assert_eq!(
            w.update(t2, s(118 * KIB, 1_600, 0, 10_000), false),
            Some(Change::Entered)
        );
        assert!(w.is_lagging());
        // A failed read or an unknown RTT decides nothing.
        let mut w = LagWatch::new(4 * KIB);
        for _ in 0..3 {
            w.refused();
            assert_eq!(w.update(t2, None, false), None);
            let unknown = KernelSample {
                held: 64 * KIB,
                ..Default::default()
            };
            assert_eq!(w.update(t2, Some(unknown), false), None);
        }
        assert!(!w.is_lagging());
    }

    /// The second row.
    #[test]
    fn lagging_samples_before_every_write_and_leaves_when_caught_up() {
        let t = Instant::now();
        let mut w = lagging_watch(t);
        assert!(w.wants_sample(t));
        // Held at the limit on the slow link: 0.4 s of queueing; it stays.
        assert_eq!(w.update(t, s(4 * KIB, 410, 0, 10_000), false), None);
        // Nothing held while frames still wait (its writer ran late): it stays. Nothing held and
        // nothing waiting: it leaves at once.
        assert_eq!(w.update(t, s(0, 410, 0, 10_000), true), None);
        assert_eq!(w.update(t, s(0, 410, 0, 10_000), false), Some(Change::Left));
        assert!(!w.is_lagging());
        // A link that became fast: the queue drains, the round trip falls back to its minimum.
        let mut w = lagging_watch(t);
        assert_eq!(
            w.update(t, s(6 * KIB, 45, 20, 1_000_000), false),
            Some(Change::Left)
        );
        // An unknown RTT keeps the state.
        let mut w = lagging_watch(t);
        let unknown = KernelSample {
            held: 6 * KIB,
            ..Default::default()
        };
        assert_eq!(w.update(t, Some(unknown), false), None);
        assert!(w.is_lagging());
    }

    #[test]
    fn a_lagging_writer_waits_while_the_kernel_holds_the_limit() {
        let t = Instant::now();
        let w = LagWatch::new(4 * KIB);
        assert_eq!(
            w.wait(s(100 * KIB, 6_000, 0, 10_000)),
            None,
            "not lagging: no wait"
        );
        let w = lagging_watch(t);
        assert_eq!(w.wait(s(4 * KIB - 1, 400, 0, 10_000)), None);
        // 1 byte over at 10 KB/s: 100 µs, raised to the shortest wait.
        assert_eq!(w.wait(s(4 * KIB, 400, 0, 10_000)), Some(MIN_WAIT));
        // 1 KiB over: ~102 ms.
        assert_eq!(
            w.wait(s(5 * KIB, 400, 0, 10_000)),
            Some(Duration::from_micros(102_500))
        );
        // Far over, or no rate: the longest wait; no sample: no wait.
        assert_eq!(w.wait(s(100 * KIB, 400, 0, 10_000)), Some(MAX_WAIT));
        assert_eq!(w.wait(s(100 * KIB, 400, 0, 0)), Some(MAX_WAIT));
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
