//! The hold queue: messages on their way to Redis, and the Critical ones held while the link is
//! down.
//!
//! | the link is | Critical | Normal, Low |
//! |---|---|---|
//! | connected | queued within the byte bound | queued within the byte bound |
//! | not connected | held within the byte bound and `criticalQueue` | not sent |
//! | going down | held | not sent ([`Hold::keep_critical`]) |
//! | failing a send | back to the front, in order ([`Hold::requeue`]) | not sent |
//!
//! The byte bound ([`MAX_QUEUE_BYTES`](super::MAX_QUEUE_BYTES)) covers queued and held messages
//! together. Whatever does not fit is handed back to the caller, which counts it as not sent: no
//! message leaves this queue uncounted. A plain struct, with no lock and no task: the link locks
//! it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::policy::Priority;

/// A message on its way to Redis.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) channel: Arc<str>,
    /// The header and the frame (or raw payload) as they go on the wire.
    pub(super) message: Vec<u8>,
    pub(super) priority: Priority,
    /// A publish on a topic with history: numbered by the script, not PUBLISHed directly.
    pub(super) history: Option<HistoryOut>,
}

/// What a publish on a topic with history needs besides its message.
#[derive(Debug)]
pub(super) struct HistoryOut {
    pub(super) topic: Arc<str>,
    /// The JavaScript promise waiting for the offset (0: none).
    pub(super) token: u64,
    /// The node's number of the message, as the script keeps it per node: a message sent again
    /// after a failure is not numbered twice.
    pub(super) seq: u64,
}

/// Messages waiting for the link task, in order, bounded by bytes and (while disconnected) by
/// the number of Critical messages held.
pub(super) struct Hold {
    messages: VecDeque<Outgoing>,
    /// The messages' bytes (`message.len()` summed). At most `max_bytes`, but for Critical
    /// messages put back by [`Hold::requeue`] (at most one batch more).
    bytes: usize,
    /// Critical messages among `messages`.
    critical: usize,
    max_bytes: usize,
    /// Critical messages taken in while disconnected, at most (`criticalQueue`).
    max_held: usize,
}

impl Hold {
    pub(super) fn new(max_bytes: usize, max_held: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            critical: 0,
            max_bytes,
            max_held,
        }
    }

    /// Critical messages waiting (`metrics().cluster.held`).
    pub(super) fn held(&self) -> usize {
        self.critical
    }

    /// Takes `m` in at the back, or hands it back (not sent): past the byte bound, or while
    /// disconnected, unless it is Critical and fewer than `criticalQueue` are held.
    pub(super) fn push(&mut self, m: Outgoing, connected: bool) -> Result<(), Outgoing> {
        let critical = m.priority == Priority::Critical;
        let fits = self.bytes + m.message.len() <= self.max_bytes;
        let keep = fits && (connected || (critical && self.critical < self.max_held));
        if !keep {
            return Err(m);
        }
        self.bytes += m.message.len();
        if critical {
            self.critical += 1;
        }
        self.messages.push_back(m);
        Ok(())
    }

    /// The link went down: the Critical messages stay, in order; the others are handed back.
    pub(super) fn keep_critical(&mut self) -> Vec<Outgoing> {
        let (kept, lost): (Vec<_>, Vec<_>) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|m| m.priority == Priority::Critical);
        self.messages = kept.into();
        self.bytes -= lost.iter().map(|m| m.message.len()).sum::<usize>();
        lost
    }

    /// The next messages to send, in order: up to `max` plain messages, or one message of a
    /// topic with history alone (it goes through the script). With `one_channel` (a Redis
    /// Cluster: a pipeline stays within one slot) a batch also stops where the channel changes.
    pub(super) fn next_batch(&mut self, max: usize, one_channel: bool) -> Vec<Outgoing> {
        let mut batch: Vec<Outgoing> = Vec::new();
        while batch.len() < max {
            let Some(next) = self.messages.front() else {
                break;
            };
            if let Some(last) = batch.last() {
                let joins = last.history.is_none()
                    && next.history.is_none()
                    && (!one_channel || last.channel == next.channel);
                if !joins {
                    break;
                }
            }
            let m = self.messages.pop_front().expect("checked above");
            self.bytes -= m.message.len();
            if m.priority == Priority::Critical {
                self.critical -= 1;
            }
            batch.push(m);
        }
        batch
    }

    /// A send failed and whether any of `failed` went out is unknown: the Critical messages go
    /// back to the front, in their order (receivers drop a second copy, and the script does not
    /// number one twice), whatever the bounds (they were within them when taken in); the others
    /// are handed back.
    pub(super) fn requeue(&mut self, failed: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut lost = Vec::new();
        for m in failed.into_iter().rev() {
            if m.priority == Priority::Critical {
                self.bytes += m.message.len();
                self.critical += 1;
                self.messages.push_front(m);
            } else {
                lost.push(m);
            }
        }
        lost.reverse();
        lost
    }

    /// Empties the queue (the server is closing); hands everything back, in order.
    pub(super) fn clear(&mut self) -> Vec<Outgoing> {
        self.bytes = 0;
        self.critical = 0;
        self.messages.drain(..).collect()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message whose wire bytes are `len` copies of `id`.
    fn msg(id: u8, priority: Priority, len: usize) -> Outgoing {
        on("c", id, priority, len)
    }

    fn on(channel: &str, id: u8, priority: Priority, len: usize) -> Outgoing {
        Outgoing {
            channel: Arc::from(channel),
            message: vec![id; len],
            priority,
            history: None,
        }
    }

    fn numbered(id: u8) -> Outgoing {
        Outgoing {
            history: Some(HistoryOut {
                topic: Arc::from("t"),
                token: 0,
                seq: id as u64,
            }),
            ..msg(id, Priority::Normal, 10)
        }
    }

    /// A connected queue holding message `i` of priority `order[i]` and `10 + i` bytes.
    fn queued(order: &[Priority]) -> Hold {
        let mut h = Hold::new(1000, 10);
        for (i, p) in order.iter().enumerate() {
            h.push(msg(i as u8, *p, 10 + i), true).unwrap();
        }
        h
    }

    fn ids(v: &[Outgoing]) -> Vec<u8> {
        v.iter().map(|m| m.message[0]).collect()
    }

    /// Every message is either in the queue or handed back, and the counters match the queue.
    fn check(h: &Hold) {
        let bytes: usize = h.messages.iter().map(|m| m.message.len()).sum();
        let critical = h
            .messages
            .iter()
            .filter(|m| m.priority == Priority::Critical)
            .count();
        assert_eq!((h.bytes, h.critical), (bytes, critical));
        assert!(h.bytes <= h.max_bytes);
    }

    #[test]
    fn connected_everything_is_queued_within_the_byte_bound() {
        let mut h = Hold::new(100, 2);
        for (i, p) in Priority::ALL.iter().enumerate() {
            assert!(h.push(msg(i as u8, *p, 30), true).is_ok());
        }
        // 90 bytes queued: 10 more fit, 11 do not, whatever the priority.
        let back = h.push(msg(9, Priority::Critical, 11), true).unwrap_err();
        assert_eq!(back.message[0], 9, "the refused message is handed back");
        assert!(h.push(msg(4, Priority::Low, 10), true).is_ok());
        assert_eq!((h.len(), h.bytes(), h.held()), (4, 100, 1));
        check(&h);
        // The bound is not on Critical count while connected.
        let mut h = Hold::new(1000, 1);
        for i in 0..5 {
            assert!(h.push(msg(i, Priority::Critical, 10), true).is_ok());
        }
        assert_eq!(h.held(), 5);
        check(&h);
    }

    #[test]
    fn disconnected_only_critical_is_held_and_only_up_to_the_count() {
        let mut h = Hold::new(1000, 2);
        assert!(h.push(msg(1, Priority::Normal, 10), false).is_err());
        assert!(h.push(msg(2, Priority::Low, 10), false).is_err());
        assert!(h.push(msg(3, Priority::Critical, 10), false).is_ok());
        assert!(h.push(msg(4, Priority::Critical, 10), false).is_ok());
        let back = h.push(msg(5, Priority::Critical, 10), false).unwrap_err();
        assert_eq!(back.message[0], 5);
        assert_eq!((h.len(), h.held()), (2, 2));
        // Within the count, the byte bound still applies.
        let mut h = Hold::new(25, 10);
        assert!(h.push(msg(1, Priority::Critical, 20), false).is_ok());
        assert!(h.push(msg(2, Priority::Critical, 6), false).is_err());
        check(&h);
    }

    #[test]
    fn going_down_keeps_the_critical_messages_in_order_and_hands_back_the_rest() {
        use Priority::*;
        let mut h = queued(&[Normal, Critical, Low, Critical, Normal]);
        let lost = h.keep_critical();
        assert_eq!(ids(&lost), [0, 2, 4]);
        assert_eq!((h.len(), h.bytes(), h.held()), (2, 11 + 13, 2));
        check(&h);
        assert_eq!(ids(&h.next_batch(10, false)), [1, 3]);
        assert_eq!((h.bytes(), h.held()), (0, 0));
    }

    #[test]
    fn batches_stop_at_the_size_at_a_numbered_message_and_with_one_channel_at_a_new_channel() {
        let mut h = Hold::new(10_000, 10);
        for i in 0..5 {
            h.push(msg(i, Priority::Normal, 10), true).unwrap();
        }
        h.push(numbered(5), true).unwrap();
        h.push(numbered(6), true).unwrap();
        h.push(msg(7, Priority::Normal, 10), true).unwrap();
        assert_eq!(ids(&h.next_batch(3, false)), [0, 1, 2]);
        assert_eq!(ids(&h.next_batch(10, false)), [3, 4]);
        assert_eq!(
            ids(&h.next_batch(10, false)),
            [5],
            "a numbered message goes alone"
        );
        assert_eq!(ids(&h.next_batch(10, false)), [6]);
        assert_eq!(ids(&h.next_batch(10, false)), [7]);
        assert!(h.next_batch(10, false).is_empty());
        check(&h);

        for (i, c) in ["a", "a", "b", "a"].iter().enumerate() {
            h.push(on(c, i as u8, Priority::Normal, 10), true).unwrap();
        }
        assert_eq!(ids(&h.next_batch(10, true)), [0, 1]);
        assert_eq!(ids(&h.next_batch(10, true)), [2]);
        assert_eq!(ids(&h.next_batch(10, true)), [3]);
        for (i, c) in ["a", "b"].iter().enumerate() {
            h.push(on(c, i as u8, Priority::Normal, 10), true).unwrap();
        }
        assert_eq!(
            ids(&h.next_batch(10, false)),
            [0, 1],
            "one Redis: any channels"
        );
        check(&h);
    }

    #[test]
    fn a_failed_send_puts_critical_back_in_front_in_order_and_hands_back_the_rest() {
        use Priority::*;
        let mut h = queued(&[Critical, Normal, Critical, Low, Critical, Normal]);
        let batch = h.next_batch(4, false);
        assert_eq!(ids(&batch), [0, 1, 2, 3]);
        assert_eq!(h.held(), 1);
        let lost = h.requeue(batch);
        assert_eq!(ids(&lost), [1, 3], "handed back in their order");
        assert_eq!(h.held(), 3);
        check(&h);
        // The held ones come first, in their order, then what was queued behind them.
        assert_eq!(ids(&h.next_batch(10, false)), [0, 2, 4, 5]);
        // A numbered message that failed goes back too, if Critical.
        let critical_numbered = Outgoing {
            priority: Priority::Critical,
            ..numbered(8)
        };
        assert!(h.requeue(vec![critical_numbered]).is_empty());
        assert_eq!(ids(&h.requeue(vec![numbered(9)])), [9]);
        assert_eq!(ids(&h.next_batch(10, false)), [8]);
        check(&h);
    }

    #[test]
    fn requeue_may_pass_the_bounds_it_was_within_when_taken_in() {
        let mut h = Hold::new(20, 1);
        h.push(msg(0, Priority::Critical, 20), false).unwrap();
        let batch = h.next_batch(1, false);
        h.push(msg(1, Priority::Critical, 20), false).unwrap();
        assert!(
            h.requeue(batch).is_empty(),
            "a Critical message is never lost"
        );
        assert_eq!((h.held(), h.bytes()), (2, 40));
        assert_eq!(ids(&h.next_batch(10, false)), [0, 1]);
    }

    #[test]
    fn clear_hands_back_everything_in_order() {
        let mut h = Hold::new(1000, 10);
        for (i, p) in Priority::ALL.iter().enumerate() {
            h.push(msg(i as u8, *p, 10), true).unwrap();
        }
        assert_eq!(ids(&h.clear()), [0, 1, 2]);
        assert_eq!((h.len(), h.bytes(), h.held()), (0, 0, 0));
    }
}
