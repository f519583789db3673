//! What a connection does with a message it cannot take at once: the per-priority policy.
//!
//! | priority | below `lowPriorityLimit` | above `lowPriorityLimit` | would exceed `maxBufferedAmount` |
//! |----------|--------------------------|--------------------------|----------------------------------|
//! | Low      | queued                   | dropped, counted         | dropped, counted                 |
//! | Normal   | queued                   | queued                   | expired and queued Low frames are evicted first; if it still does not fit, `onOverflow`: `terminate` (default), `drop` or `resync` |
//! | Critical | queued ahead of Normal/Low | queued ahead           | expired and queued Low frames are evicted first; if it still does not fit, the connection is terminated |
//!
//! `resync`: the connection's queued Normal and Low frames are discarded (counted as dropped,
//! cause `resync`), the message is queued in their place and JavaScript gets a `resync` event to
//! send a fresh snapshot. A second overflow before the queue has drained below `lowWaterMark`
//! terminates the connection (counted apart, `terminated.resyncOverflow`).
//!
//! **One message past the bound.** A Normal or Critical message that does not fit under
//! `maxBufferedAmount`, even after the evictions, is still queued when the queue is below
//! `highWaterMark` (or `maxBufferedAmount`, if that is lower) instead of meeting `onOverflow`:
//! the connection is keeping up, and a file or a snapshot larger than the bound must be sendable
//! to it (uWebSockets.js checks its limit before a send, not after, for the same reason). The
//! bound on a connection's queue is then that threshold plus the one message: while it is
//! queued the queue is above the threshold, so the next message that does not fit meets the
//! table above (wait for `drain` before sending more).
//!
//! Control frames (pong, close, ping) bypass the policy and go ahead of all data. A frame the
//! writer has already started is never interrupted: priorities reorder only what is still queued.
//!
//! The policy is a pure function of the queue's state, so it is tested without sockets.

/// Message priority. `Normal` is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Priority {
    Critical,
    Normal,
    Low,
}

impl Priority {
    pub(crate) const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Low];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What happens to a connection when a Normal message does not fit under `maxBufferedAmount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OverflowAction {
    /// Close the connection (1008 if a close frame can still go out, else drop the TCP connection).
    Terminate,
    /// Drop the message and count it; the connection stays.
    Drop,
    /// Discard the queued Normal and Low frames, queue the message, tell JavaScript (`resync`);
    /// a second overflow before draining below `lowWaterMark` terminates.
    Resync,
}

/// Default `lowPriorityLimit`: 128 KiB. A client 128 KiB behind is lagging by ~64 lobby updates;
/// cosmetic data sent to it now would only delay what matters.
pub(crate) const DEFAULT_LOW_PRIORITY_LIMIT: usize = 128 * 1024;
/// Default `maxBufferedAmount`: 512 KiB, the bound commonly used with `ws` and uWebSockets.js.
pub(crate) const DEFAULT_MAX_BUFFERED_AMOUNT: usize = 512 * 1024;
/// Default `highWaterMark`: 64 KiB, where `backpressure` fires.
pub(crate) const DEFAULT_HIGH_WATER_MARK: usize = 64 * 1024;
/// Default `lowWaterMark`: 16 KiB, where `drain` fires after `backpressure`.
pub(crate) const DEFAULT_LOW_WATER_MARK: usize = 16 * 1024;

/// Per-connection bounds, all in bytes of encoded frames.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) low_priority_limit: usize,
    pub(crate) max_buffered_amount: usize,
    pub(crate) on_overflow: OverflowAction,
    pub(crate) high_water_mark: usize,
    pub(crate) low_water_mark: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            low_priority_limit: DEFAULT_LOW_PRIORITY_LIMIT,
            max_buffered_amount: DEFAULT_MAX_BUFFERED_AMOUNT,
            on_overflow: OverflowAction::Terminate,
            high_water_mark: DEFAULT_HIGH_WATER_MARK,
            low_water_mark: DEFAULT_LOW_WATER_MARK,
        }
    }
}

/// The policy's verdict for one message, before any eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Queue it.
    Accept,
    /// Queue it after evicting queued Low frames worth at least `need` bytes, if there are enough;
    /// otherwise fall back to `otherwise`.
    EvictLow { need: usize, otherwise: Fallback },
    /// Drop this message (counted).
    Drop,
}

/// What to do when eviction cannot make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    Drop,
    Terminate,
    Resync,
}

impl Limits {
    /// Decides for a message of `len` bytes at `priority` on a connection with `buffered` bytes.
    pub(crate) fn decide(&self, buffered: usize, len: usize, priority: Priority) -> Verdict {
        let fits = buffered.saturating_add(len) <= self.max_buffered_amount;
        match priority {
            Priority::Low => {
                if buffered > self.low_priority_limit || !fits {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                }
            }
            _ if fits => Verdict::Accept,
            Priority::Normal => Verdict::EvictLow {
                need: buffered + len - self.max_buffered_amount,
                otherwise: match self.on_overflow {
                    OverflowAction::Terminate => Fallback::Terminate,
                    OverflowAction::Drop => Fallback::Drop,
                    OverflowAction::Resync => Fallback::Resync,
                },
            },
            Priority::Critical => Verdict::EvictLow {
                need: buffered + len - self.max_buffered_amount,
                otherwise: Fallback::Terminate,
            },
        }
    }
}

impl Limits {
    /// Whether a Normal or Critical message that does not fit may still be queued, as the one
    /// message past the bound (see the module's documentation).
    pub(crate) fn may_pass_the_bound(&self, buffered: usize, priority: Priority) -> bool {
        priority != Priority::Low && buffered < self.high_water_mark.min(self.max_buffered_amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table_holds() {
        let l = Limits::default();
        let kib = 1024;
        assert_eq!(l.decide(0, 2 * kib, Priority::Low), Verdict::Accept);
        assert_eq!(l.decide(129 * kib, 2 * kib, Priority::Low), Verdict::Drop);
        assert_eq!(
            l.decide(129 * kib, 2 * kib, Priority::Normal),
            Verdict::Accept
        );
        assert_eq!(
            l.decide(511 * kib, 2 * kib, Priority::Normal),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Terminate
            }
        );
        assert_eq!(
            l.decide(511 * kib, 2 * kib, Priority::Critical),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Terminate
            }
        );
        let drop = Limits {
            on_overflow: OverflowAction::Drop,
            ..l
        };
        assert_eq!(
            drop.decide(511 * kib, 2 * kib, Priority::Normal),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Drop
            }
        );
        let resync = Limits {
            on_overflow: OverflowAction::Resync,
            ..l
        };
        assert_eq!(
            resync.decide(511 * kib, 2 * kib, Priority::Normal),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Resync
            }
        );
        assert_eq!(
            resync.decide(511 * kib, 2 * kib, Priority::Critical),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Terminate
            }
        );
        // Critical ignores onOverflow: it is never dropped.
        assert_eq!(
            drop.decide(511 * kib, 2 * kib, Priority::Critical),
            Verdict::EvictLow {
                need: kib,
                otherwise: Fallback::Terminate
            }
        );
        // One message past the bound, when nothing else makes room: Normal and Critical, on a
        // connection below highWaterMark (or maxBufferedAmount, if lower).
        assert!(l.may_pass_the_bound(63 * kib, Priority::Normal));
        assert!(l.may_pass_the_bound(0, Priority::Critical));
        assert!(!l.may_pass_the_bound(64 * kib, Priority::Normal));
        assert!(!l.may_pass_the_bound(0, Priority::Low));
        let small = Limits {
            max_buffered_amount: 8 * kib,
            ..l
        };
        assert!(small.may_pass_the_bound(7 * kib, Priority::Normal));
        assert!(!small.may_pass_the_bound(8 * kib, Priority::Normal));
        // A Low frame never pushes the queue past the hard bound either.
        let tight = Limits {
            low_priority_limit: 600 * kib,
            ..l
        };
        assert_eq!(
            tight.decide(511 * kib, 2 * kib, Priority::Low),
            Verdict::Drop
        );
    }
}
