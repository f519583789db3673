//! What one connection keeps under its one lock: its outbox and its [`Lifecycle`], changed
//! together.
//!
//! The outbox decides what is queued and in which order; the lifecycle decides when the
//! connection closes and how. They must never disagree (a close frame queued while the machine
//! thinks the connection open, data accepted after a close frame), so both live in one
//! [`ConnState`] behind the connection's mutex, and every input to the machine is applied to the
//! outbox in the same critical section ([`ConnState::on`]): the close frames it asks for are
//! queued, the queue is discarded when it ends. What must happen outside the lock (waking a
//! task, a `shutdown`, an event to JavaScript, the counters) comes back as [`Effects`].
//!
//! Invariants, checked by the model test (`conn_state_model.rs`) over every interleaving of a
//! writer, producers and closes:
//!
//! * `life.is_open() == outbox.is_open()` after every step;
//! * the writer's `CloseTaken` / `CloseWritten` inputs follow the outbox: a close frame is taken
//!   once, and written once, always last;
//! * `buffered_data() = buffered() - (the close frame still unwritten)`.

use std::time::{Duration, Instant};

use crate::core::lifecycle::{Action, CloseInfo, Input, Lifecycle};
use crate::core::message::Frame;
use crate::core::outbox::{Batched, Drops, LazyNow, Outbox, Taken};
use crate::core::policy::Limits;
use crate::wire::close::CloseCode;
use crate::wire::frame::{encode, encode_close, OpCode};

/// What the caller must do, outside the lock, after an input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Notify the writer: it was idle and a close frame is queued for it, or an urgent close must
    /// reach it while it waits for the socket.
    pub(crate) wake_writer: bool,
    /// Notify the reader: its deadline or what it reads changed.
    pub(crate) wake_reader: bool,
    /// Push `Event::PeerClose` for JavaScript.
    pub(crate) report_peer_close: bool,
    /// Shut down the socket's write side.
    pub(crate) shutdown_write: bool,
    /// A close frame of ours was queued (a `close()` was accepted).
    pub(crate) queued_close: bool,
    /// Frames discarded by this input, to be counted as dropped.
    pub(crate) drops: Drops,
    /// The connection ended: shut the socket down, stop the reader and the writer.
    pub(crate) end: Option<Ending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ending {
    /// Reset instead of FIN (linger 0).
    pub(crate) reset: bool,
    /// The connection was between a `backpressure` and its `drain` (the server's count of
    /// backpressured connections goes down by one).
    pub(crate) was_above_high_water: bool,
}

/// The outbox and the lifecycle of one connection (see the module doc).
pub(crate) struct ConnState {
    /// Data, pings and pongs go straight to the outbox; close frames only through
    /// [`ConnState::on`], which keeps the lifecycle in step.
    pub(crate) outbox: Outbox,
    life: Lifecycle,
    /// Size of our close frame once queued (0: none). It is always the last frame, so
    /// `buffered - min(buffered, close_len)` is the data not yet handed to the kernel.
    close_len: usize,
}

/// Our close frame: `code` and `reason`, or no body for 1005 ("no status", never sent as a code).
pub(crate) fn close_frame(c: &CloseInfo) -> Frame {
    Frame::new(if c.code == CloseCode::NoStatus.code() {
        encode(OpCode::Close, b"")
    } else {
        encode_close(c.code, &c.reason)
    })
}

impl ConnState {
    pub(crate) fn new(
        limits: impl Into<std::sync::Arc<Limits>>,
        close_timeout: Duration,
        linger: Duration,
    ) -> Self {
        Self {
            outbox: Outbox::new(limits),
            life: Lifecycle::new(close_timeout, linger),
            close_len: 0,
        }
    }

    pub(crate) fn life(&self) -> &Lifecycle {
        &self.life
    }

    /// Bytes of data (and pings, pongs) not yet handed to the kernel: [`Outbox::buffered`]
    /// without the close frame.
    pub(crate) fn buffered_data(&self) -> usize {
        let b = self.outbox.buffered();
        b - b.min(self.close_len)
    }

    /// Applies `input` to the lifecycle and what it asks of the queue to the outbox.
    pub(crate) fn on(&mut self, input: Input, now: Instant) -> Effects {
        let mut e = Effects::default();
        for a in self.life.on(input, now) {
            match a {
                Action::QueueClose(c) => {
                    let f = close_frame(&c);
                    let len = f.len();
                    let wake = self.outbox.close_after_data(f);
                    debug_assert!(wake.is_some(), "the machine queues one close after data");
                    if let Some(w) = wake {
                        self.close_len = len;
                        e.wake_writer |= w;
                        e.queued_close = true;
                    }
                }
                Action::QueueCloseNow(c) => {
                    let f = close_frame(&c);
                    let len = f.len();
                    let queued = self.outbox.close_now(f);
                    debug_assert!(queued.is_some(), "the machine knows the close is not taken");
                    if let Some((drops, w)) = queued {
                        self.close_len = len;
                        e.drops = drops;
                        e.wake_writer |= w;
                    }
                }
                Action::WakeWriter => e.wake_writer = true,
                Action::WakeReader => e.wake_reader = true,
                Action::ReportPeerClose => e.report_peer_close = true,
                Action::ShutdownWrite => e.shutdown_write = true,
                Action::End { reset } => {
                    let was_above_high_water = self.outbox.above_high_water();
                    e.drops = self.outbox.discard();
                    e.end = Some(Ending {
                        reset,
                        was_above_high_water,
                    });
                }
            }
        }
        debug_assert_eq!(self.life.is_open(), self.outbox.is_open());
        e
    }

    /// [`Outbox::take_batch`], telling the lifecycle when the close frame is taken.
    pub(crate) fn take_batch(
        &mut self,
        batch: &mut Vec<Batched>,
        max_frames: usize,
        max_bytes: usize,
        now: &mut LazyNow,
    ) -> Taken {
        let t = self.outbox.take_batch(batch, max_frames, max_bytes, now);
        if t.close {
            let e = self.on(Input::CloseTaken, now.get());
            debug_assert_eq!(e, Effects::default());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Priority;
    use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketContext};

    /// A client frame (masked) with `op` and `payload`.
    fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    struct Pipe {
        input: std::io::Cursor<Vec<u8>>,
        out: Vec<u8>,
    }
    impl std::io::Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.input.read(buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }
    impl std::io::Write for Pipe {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.out.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The reply the lifecycle queues to a peer's close frame ([`close_frame`] of the close the
    /// parser reports) is byte for byte what tungstenite would have sent: the reader no longer
    /// forwards tungstenite's own reply.
    #[test]
    fn our_reply_is_tungstenites_reply() {
        let long = "r".repeat(123);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            [&1000u16.to_be_bytes()[..], b"bye"].concat(),
            [&4000u16.to_be_bytes()[..], long.as_bytes()].concat(),
            1001u16.to_be_bytes().to_vec(),
            // Not allowed on the wire: tungstenite answers (and reports) 1002.
            [&1005u16.to_be_bytes()[..], b"x"].concat(),
            [&1006u16.to_be_bytes()[..], "é".as_bytes()].concat(),
        ];
        for payload in cases {
            let mut io = Pipe {
                input: std::io::Cursor::new(client_frame(0x8, &payload)),
                out: Vec::new(),
            };
            let mut ctx = WebSocketContext::new(Role::Server, None);
            let msg = ctx.read(&mut io).unwrap();
            let _ = ctx.flush(&mut io);
            let Message::Close(frame) = msg else {
                panic!("{msg:?}")
            };
            let info = frame
                .map(|f| CloseInfo::new(u16::from(f.code), &f.reason))
                .unwrap_or(CloseInfo::new(CloseCode::NoStatus.code(), ""));
            assert_eq!(
                &close_frame(&info).bytes[..],
                &io.out[..],
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn buffered_data_leaves_out_the_close_frame_until_it_is_written() {
        let now = Instant::now();
        let mut s = ConnState::new(
            Limits::default(),
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
        assert!(
            s.outbox
                .push(
                    Frame::new(encode(OpCode::Binary, &[0; 98])),
                    Priority::Normal
                )
                .wake
        );
        assert_eq!(s.buffered_data(), 100);
        // The push woke the idle writer already.
        let e = s.on(Input::Close(CloseInfo::new(1000, "")), now);
        assert!(e.queued_close && !e.wake_writer);
        assert_eq!(s.outbox.buffered(), 104);
        assert_eq!(s.buffered_data(), 100);
        let mut batch = Vec::new();
        let t = s.take_batch(&mut batch, 64, usize::MAX, &mut now.into());
        assert!(t.close);
        assert_eq!(
            s.life().state(),
            crate::core::lifecycle::State::Closing { taken: true }
        );
        s.outbox.written(99);
        assert_eq!(s.buffered_data(), 1);
        s.outbox.written(3);
        assert_eq!(s.buffered_data(), 0);
        s.outbox.written(2);
        assert_eq!(s.outbox.buffered(), 0);
        // Ending discards and reports what was above the high-water mark.
        let e = s.on(Input::End(None), now);
        assert_eq!(
            e.end,
            Some(Ending {
                reset: false,
                was_above_high_water: false
            })
        );
    }

    #[test]
    fn a_failure_discards_the_queue_and_goes_first() {
        let now = Instant::now();
        let mut s = ConnState::new(
            Limits::default(),
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
        for _ in 0..3 {
            s.outbox
                .push(Frame::new(encode(OpCode::Binary, &[0; 8])), Priority::Low);
        }
        s.on(Input::Close(CloseInfo::new(1000, "")), now);
        let e = s.on(
            Input::Fail {
                close: CloseInfo::new(1008, "x"),
                why: crate::core::lifecycle::Failure::Overflow,
            },
            now,
        );
        assert_eq!(e.drops.frames, [0, 0, 3]);
        assert!(e.wake_writer && e.wake_reader && !e.queued_close);
        assert_eq!(s.outbox.buffered(), 5);
        assert_eq!(s.buffered_data(), 0);
        assert!(s.life().urgent());
    }
}
