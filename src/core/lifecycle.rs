//! A connection's life after the handshake, as one state machine: how it closes, in which order,
//! and what ends it.
//!
//! [`Lifecycle`] is plain data: no I/O, no clock, no locking. The connection keeps it under the
//! same lock as its outbox (`core::conn_state`), feeds it every [`Input`] that concerns its end
//! (a close requested here or received from the peer, a failure, the writer's progress with our
//! close frame, the peer's FIN, a timeout, an error, `terminate()`) and performs the [`Action`]s
//! each input returns. The reader asks it what to read ([`Reading`]) and until when it may wait
//! ([`Lifecycle::deadline`]); the server asks it, once the connection is gone, what to report
//! ([`Lifecycle::close_event`], [`Lifecycle::termination`]).
//!
//! # What it promises
//!
//! * **Graceful close in either order.** A close of our own (`close()`, or 1001 when the server
//!   closes) goes out after the data already queued, and the connection waits for the peer's
//!   close frame, still reading (and passing on) the peer's messages. A close from the peer is
//!   answered after the data already queued; while JavaScript listens for inbound events the
//!   answer also waits until JavaScript has handled the messages that came before the peer's close
//!   (it is told with [`Action::ReportPeerClose`] and answers with [`Input::AnswerClose`]), so that
//!   a client's last request can still be answered; a `close()` meanwhile is the answer instead.
//!   Once our close frame is in the kernel and the peer's is in, our write side is shut first (FIN,
//!   as RFC 6455 §7.1.1 asks of a server) and what the peer still sends is discarded until its FIN.
//!   A peer that sends its FIN right after its close frame still gets what was queued for it, then
//!   our close frame, then the connection ends.
//! * **Failing a connection** ([`Input::Fail`]: a protocol error, a message that waited too long
//!   for room, the inbound rate, an overflow of the send buffer) discards what is queued and puts a
//!   close frame first, unless the writer already holds ours. Once it is out, the write side is
//!   shut without waiting for the peer's close. An urgent failure (overflow, rate) ends the
//!   connection at once if the writer cannot write ([`Input::WriteBlocked`]); one for the inbound
//!   rate reads nothing more and is reset [`Lifecycle::new`]'s `linger` after its close frame.
//! * **Ending** ([`Input::End`]: `terminate()`, a missed pong, `closeTimeout`, an I/O error, the
//!   FIN at the end of the close handshake) happens once. [`Action::End`] says whether to reset
//!   (linger 0) so that the kernel frees a stalled peer's unsent bytes at once: after an overflow,
//!   a missed pong, `terminate()` or the inbound rate.
//! * **One cause, the first.** The first [`Termination`] given is the one counted, and later ones
//!   are ignored. A cause given after the end is still recorded if none was (see the last row).
//! * **One close event.** The peer's close code and reason if it sent a close frame, else ours if
//!   our close frame reached the kernel, else 1006; ours is the first close frame queued.
//! * `closeTimeout` runs from the first close frame either way (or from a failure) and bounds the
//!   whole exchange, JavaScript's answer included.
//!
//! # Transition table
//!
//! `·p`: the peer's close frame is in. `arm`: the close deadline is set to now + `closeTimeout`
//! unless it is already set. `sent`: the close frame is recorded as ours unless one already was.
//! `half-close`: → `HalfClosed`, [`Action::ShutdownWrite`], [`Action::WakeReader`], `Parse`
//! becomes `Drain`, and with `Nothing` read the deadline is cut to now + `linger` (never pushed
//! back). `end(c)`: → `Ended`, [`Action::End`] (reset by the first cause). A row's reading change
//! applies only to the reading named; other readings are kept. The test
//! `every_transition_of_the_table_and_nothing_else` checks each row, and that every other pair
//! of a configuration and an input is ignored.
//!
//! | State | Input | Next state (reading) | Actions |
//! |---|---|---|---|
//! | `Open` | `Close(c)` | `Closing` | `QueueClose(c)`, sent, arm, `WakeReader` |
//! | `Open` | `PeerClose(c)`, deferred | `PeerClosed`·p (`Drain`) | `ReportPeerClose`, arm |
//! | `Open` | `PeerClose(c)`, not deferred | `Closing`·p (`Drain`) | `QueueClose(c)`, sent, arm |
//! | `Open` | `Fail(c, f)` | `Failing` (by `f`) | `QueueCloseNow(c)`, sent, arm, `WakeWriter` if urgent, `WakeReader` |
//! | `Open` | `ParserDone` | `Open` (`Parse` → `Drain`) | |
//! | `Open` | `Eof` (while draining) | `Ended` | end(`Io`) |
//! | `PeerClosed` | `Close(c)` | `Closing`·p | `QueueClose(c)` (the answer), sent, `WakeReader` |
//! | `PeerClosed` | `AnswerClose` | `Closing`·p | `QueueClose(peer's c)`, sent, `WakeReader` |
//! | `PeerClosed` | `Fail(c, f)` | `Failing`·p | `QueueCloseNow(c)`, sent, `WakeWriter` if urgent, `WakeReader` |
//! | `PeerClosed` (`Eof`) | `Fail(c, f)` | `Ended` | end(none) |
//! | `PeerClosed` | `Eof` | `PeerClosed` (`Drain` → `Eof`) | |
//! | `Closing` | `PeerClose(c)` | `Closing`·p (`Drain`) | `ReportPeerClose` if deferred, arm |
//! | `Closing` | `CloseTaken` | `Closing` (taken) | |
//! | `Closing` | `CloseWritten` | `AwaitingPeer` | `WakeReader` |
//! | `Closing`·p | `CloseWritten` | half-close | |
//! | `Closing`·p (`Eof`) | `CloseWritten` | `Ended` | end(none) |
//! | `Closing`·p | `Eof` | `Closing`·p (`Drain` → `Eof`) | |
//! | `Closing` (no peer, `Drain`) | `Eof` | `Ended` | end(`Io`) |
//! | `Closing`, not taken | `Fail(c, f)` | `Failing` (by `f`) | `QueueCloseNow(c)` (replaces ours), arm, `WakeWriter` if urgent, `WakeReader` |
//! | `Closing`, taken | `Fail(c, f)` | `Failing` taken (by `f`) | `WakeReader` (ours is the close frame) |
//! | `Closing`·p (`Eof`) | `Fail(c, f)` | `Ended` | end(none) |
//! | `Failing` | `PeerClose(c)` | `Failing`·p (`Drain`) | `ReportPeerClose` if deferred |
//! | `Failing`, not taken | `Fail(c, f)` | `Failing` (by `f`) | `QueueCloseNow(c)` (replaces the first), `WakeWriter` if urgent, `WakeReader` |
//! | `Failing`, taken | `Fail(c, f)` | `Failing` (by `f`) | `WakeReader` |
//! | `Failing` | `CloseTaken` | `Failing` (taken) | |
//! | `Failing` | `CloseWritten` | half-close | |
//! | `Failing`, urgent | `WriteBlocked` | `Ended` | end(`Overflow`) |
//! | `Failing` | `Eof` | `Ended` | end(none) |
//! | `AwaitingPeer` | `PeerClose(c)` | half-close (`Drain`) | `ReportPeerClose` if deferred |
//! | `AwaitingPeer` | `Fail(c, f)` | half-close (by `f`) | (ours is out) |
//! | `AwaitingPeer` | `ParserDone` | `AwaitingPeer` (`Parse` → `Drain`) | |
//! | `AwaitingPeer` (`Drain`) | `Eof` | `Ended` | end(`Io`) |
//! | `HalfClosed` | `Fail(c, RateLimited)` (`Drain`) | `HalfClosed` (`Nothing`) | deadline cut to now + `linger`, `WakeReader` |
//! | `HalfClosed` | `Eof` | `Ended` | end(none) |
//! | any but `Ended` | `End(c)` | `Ended` | end(`c`) |
//! | `Ended` | `CloseWritten` | `Ended` (our close reached the kernel) | |
//! | `Ended` | any other | `Ended` | none; a cause is recorded if none was |
//!
//! `Fail(c, f)` changes the reading by its [`Failure`] ("by `f`"): a protocol error or a message
//! without room (`Protocol`, `PartialBudget`) makes `Parse` `Drain`; the inbound rate
//! (`RateLimited`) makes `Parse` or `Drain` `Nothing`; an overflow keeps it (the peer did nothing
//! wrong; its messages are read until our close frame is out). Urgent: `RateLimited`, `Overflow`,
//! `ResyncOverflow`.
//!
//! Every other pair is ignored (no change, no action): a second `Close` or `AnswerClose` once a
//! close frame is queued (`close()` returns false), a `PeerClose` once the peer's close is in or
//! the frames are no longer parsed, `CloseTaken`/`CloseWritten` with no close frame queued, `Eof`
//! while parsing (the parser reports it as an I/O error instead) or when nothing is read,
//! `WriteBlocked` without an urgent failure, `ParserDone` when not parsing, any other `Fail` after
//! the write side is shut (`HalfClosed`; its cause is still recorded if none was).
//!
//! # Example
//!
//! (The same lines run as the test `the_module_doc_example_holds`.)
//!
//! ```text
//! let mut life = Lifecycle::new(close_timeout, linger);
//! let a = life.on(Input::Close(CloseInfo::new(1000, "bye")), now);
//! assert_eq!(a, [Action::QueueClose(CloseInfo::new(1000, "bye")), Action::WakeReader]);
//! life.on(Input::CloseTaken, now);
//! life.on(Input::CloseWritten, now); // AwaitingPeer
//! let a = life.on(Input::PeerClose { close: CloseInfo::new(1000, ""), defer: false }, now);
//! assert_eq!(a, [Action::ShutdownWrite, Action::WakeReader]); // HalfClosed
//! assert_eq!(life.on(Input::Eof, now), [Action::End { reset: false }]);
//! assert_eq!(life.close_event(), CloseInfo::new(1000, ""));
//! ```

use std::time::{Duration, Instant};

use crate::core::metrics::Termination;
use crate::wire::close::CloseCode;

/// A close frame's code and reason, as queued by us or received from the peer. Code 1005 ("no
/// status") stands for a close frame without a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseInfo {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl CloseInfo {
    pub(crate) fn new(code: u16, reason: &str) -> Self {
        Self {
            code,
            reason: reason.to_string(),
        }
    }
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// No close frame either way.
    Open,
    /// The peer's close frame is in; our reply waits for JavaScript ([`Input::AnswerClose`]).
    /// Data may still be queued: it goes out ahead of the reply.
    PeerClosed,
    /// A close frame of ours (our own, or the reply to the peer's) is queued after the data.
    /// `taken`: the writer has it in its batch.
    Closing { taken: bool },
    /// The connection is being failed: what was queued is discarded, a close frame goes first
    /// (or ours was already taken). `urgent`: if it cannot be written now, the connection ends.
    Failing { taken: bool, urgent: bool },
    /// Our close frame is in the kernel (gracefully); waiting for the peer's, still parsing.
    AwaitingPeer,
    /// Our close frame is out and the peer's is in (or the connection is being failed): the write
    /// side is shut, and what the peer sends is discarded until its FIN.
    HalfClosed,
    /// Gone. `wrote_close`: our close frame had reached the kernel.
    Ended { wrote_close: bool },
}

/// What the reader does with the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Parse frames and pass the messages on.
    Parse,
    /// The protocol is over: read and discard until the peer's FIN.
    Drain,
    /// The peer's FIN came after its close frame, before ours went out: nothing more to read.
    Eof,
    /// Nothing is read (over the inbound rate, or ended).
    Nothing,
}

/// Why the server fails a connection ([`Input::Fail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A malformed frame, bad UTF-8, an oversized message.
    Protocol,
    /// No room under `maxPartialMessageBytes` within `PARTIAL_ROOM_TIMEOUT`.
    PartialBudget,
    /// Over the inbound rate limits.
    RateLimited,
    /// Over `maxBufferedAmount` (terminate policy, or Critical).
    Overflow,
    /// Over again while a resync had not yet drained.
    ResyncOverflow,
}

impl Failure {
    pub(crate) fn termination(self) -> Termination {
        match self {
            Failure::Protocol => Termination::Protocol,
            Failure::PartialBudget => Termination::PartialBudget,
            Failure::RateLimited => Termination::RateLimited,
            Failure::Overflow => Termination::Overflow,
            Failure::ResyncOverflow => Termination::ResyncOverflow,
        }
    }

    /// A peer that floods us, or a queue that cannot take the close frame: the connection ends
    /// if the close frame cannot be written right now.
    fn urgent(self) -> bool {
        matches!(
            self,
            Failure::RateLimited | Failure::Overflow | Failure::ResyncOverflow
        )
    }

    /// What parsing becomes: the protocol is over after the peer broke it, nothing more is read
    /// from a flooder, and an overflow is ours, not the peer's fault.
    fn reading(self) -> Reading {
        match self {
            Failure::Protocol | Failure::PartialBudget => Reading::Drain,
            Failure::RateLimited => Reading::Nothing,
            Failure::Overflow | Failure::ResyncOverflow => Reading::Parse,
        }
    }
}

/// What happened to the connection (see the transition table in the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// A graceful close of our own: `conn.close()`, or 1001 when the server closes.
    Close(CloseInfo),
    /// The peer's close frame. `defer`: JavaScript listens for inbound events, so the reply waits
    /// for [`Input::AnswerClose`].
    PeerClose { close: CloseInfo, defer: bool },
    /// JavaScript has handled the events before the peer's close: the reply may go.
    AnswerClose,
    /// Fail the connection with the close frame `close`.
    Fail { close: CloseInfo, why: Failure },
    /// The parser reports the stream closed: nothing more to parse.
    ParserDone,
    /// The writer moved our close frame into its batch.
    CloseTaken,
    /// The writer handed the last byte of our close frame to the kernel.
    CloseWritten,
    /// The peer's FIN, read while draining.
    Eof,
    /// The kernel takes nothing more from the writer right now.
    WriteBlocked,
    /// End now, for this cause if any (`terminate()`: `Requested`; a missed pong, `closeTimeout`,
    /// an I/O error, the inbound rate while draining; none for an end without a cause of its own).
    End(Option<Termination>),
}

/// What the net layer must do for an input, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Queue our close frame after the data already queued.
    QueueClose(CloseInfo),
    /// Discard what is queued (counted as dropped) and queue this close frame ahead of everything.
    QueueCloseNow(CloseInfo),
    /// Wake the writer even if it waits for the socket to become writable (an urgent close).
    WakeWriter,
    /// Wake the reader: its deadline or what it reads has changed.
    WakeReader,
    /// Tell JavaScript that the peer's close frame came (after the messages before it).
    ReportPeerClose,
    /// Shut down the write side (FIN): our close frame is out.
    ShutdownWrite,
    /// End the connection: discard what is queued (counted), shut the socket down (with a reset
    /// if `reset`: the kernel frees a stalled peer's unsent bytes at once) and stop the reader
    /// and the writer.
    End { reset: bool },
}

/// The state machine (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    state: State,
    reading: Reading,
    /// The first cause given; the one counted.
    why: Option<Termination>,
    /// The first close frame we queued. Boxed, as `peer`: 8 bytes each in every connection
    /// instead of 32, for a close that comes once, at its end.
    sent: Option<Box<CloseInfo>>,
    /// The peer's close frame.
    peer: Option<Box<CloseInfo>>,
    /// The connection ends at this instant (`closeTimeout`, or the linger after a rate-limited
    /// close frame).
    deadline: Option<Instant>,
    /// `closeTimeout` and the linger, in ms (8 bytes instead of two `Duration`s' 32: options
    /// give both in whole ms, up to `u32::MAX`).
    close_timeout_ms: u32,
    linger_ms: u32,
}

/// `d` in whole ms, at most `u32::MAX` (49 days).
fn to_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Lifecycle {
    /// `close_timeout` bounds the close handshake; `linger` is how long a connection failed for
    /// its inbound rate is kept once its close frame is out.
    pub(crate) fn new(close_timeout: Duration, linger: Duration) -> Self {
        Self {
            state: State::Open,
            reading: Reading::Parse,
            why: None,
            sent: None,
            peer: None,
            deadline: None,
            close_timeout_ms: to_ms(close_timeout),
            linger_ms: to_ms(linger),
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn reading(&self) -> Reading {
        self.reading
    }

    /// When the connection must end if it has not yet.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// No close frame of ours queued, and not ended (the peer's close may be in, awaiting the
    /// answer): data and pings are accepted.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open | State::PeerClosed)
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended { .. })
    }

    /// The writer must not wait for a lagging socket: the close frame goes now or never.
    pub(crate) fn urgent(&self) -> bool {
        matches!(self.state, State::Failing { urgent: true, .. })
    }

    /// The cause to count, if the connection did not end by a completed close handshake alone.
    pub(crate) fn termination(&self) -> Option<Termination> {
        self.why
    }

    /// The close event's code and reason: the peer's, else ours if it reached the kernel, else 1006.
    pub(crate) fn close_event(&self) -> CloseInfo {
        if let Some(p) = &self.peer {
            return (**p).clone();
        }
        let wrote = match self.state {
            State::AwaitingPeer | State::HalfClosed => true,
            State::Ended { wrote_close } => wrote_close,
            _ => false,
        };
        match (&self.sent, wrote) {
            (Some(s), true) => (**s).clone(),
            _ => CloseInfo::new(CloseCode::Abnormal.code(), ""),
        }
    }

    /// Applies one input and returns what the caller must do.
    pub(crate) fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        use State::*;
        let mut out = Vec::new();
        match input {
            Input::Close(c) => {
                if self.is_open() {
                    self.queue(c, now, &mut out);
                    out.push(Action::WakeReader);
                }
            }
            Input::AnswerClose => {
                if self.state == PeerClosed {
                    let c = self.peer.clone().expect("PeerClosed has the peer's close");
                    self.queue(*c, now, &mut out);
                    out.push(Action::WakeReader);
                }
            }
            Input::PeerClose { close, defer } => {
                // Only a parser reports one (`Open`, `Closing`, `Failing` by overflow,
                // `AwaitingPeer`), and only once.
                if self.reading != Reading::Parse || self.peer.is_some() {
                    return out;
                }
                self.peer = Some(Box::new(close.clone()));
                self.arm(now);
                self.reading = Reading::Drain;
                if defer {
                    out.push(Action::ReportPeerClose);
                }
                match self.state {
                    Open if defer => self.state = PeerClosed,
                    Open => self.queue(close, now, &mut out),
                    AwaitingPeer => self.half_close(now, &mut out),
                    _ => {}
                }
            }
            Input::Fail { close, why } => {
                self.record(Some(why.termination()));
                if self.is_ended() {
                    return out;
                }
                let was = self.reading;
                self.reading = match (was, why.reading()) {
                    (Reading::Parse, r) | (Reading::Drain, r @ Reading::Nothing) => r,
                    _ => was,
                };
                if self.state == HalfClosed {
                    // Our close frame is out already; a flooder is still read no more, and is
                    // reset shortly.
                    if self.reading != was {
                        self.linger(now);
                        out.push(Action::WakeReader);
                    }
                    return out;
                }
                self.arm(now);
                if self.reading == Reading::Eof {
                    // The peer has half-closed and nothing of ours is out: nothing to wait for.
                    self.end(&mut out);
                    return out;
                }
                let was_urgent = self.urgent();
                let urgent = was_urgent || why.urgent();
                match self.state {
                    AwaitingPeer => {
                        self.half_close(now, &mut out);
                        return out;
                    }
                    Closing { taken: true } | Failing { taken: true, .. } => {
                        self.state = Failing {
                            taken: true,
                            urgent,
                        };
                    }
                    _ => {
                        self.sent.get_or_insert_with(|| Box::new(close.clone()));
                        out.push(Action::QueueCloseNow(close));
                        if why.urgent() {
                            out.push(Action::WakeWriter);
                        }
                        self.state = Failing {
                            taken: false,
                            urgent,
                        };
                    }
                }
                out.push(Action::WakeReader);
            }
            Input::ParserDone => {
                if self.reading == Reading::Parse {
                    self.reading = Reading::Drain;
                }
            }
            Input::CloseTaken => match self.state {
                Closing { .. } => self.state = Closing { taken: true },
                Failing { urgent, .. } => {
                    self.state = Failing {
                        taken: true,
                        urgent,
                    }
                }
                _ => {}
            },
            Input::CloseWritten => match self.state {
                Closing { .. } if self.peer.is_none() => {
                    self.state = AwaitingPeer;
                    out.push(Action::WakeReader);
                }
                Closing { .. } if self.reading == Reading::Eof => {
                    // The peer half-closed after its close frame; ours was the last thing to send.
                    self.end(&mut out);
                    self.state = Ended { wrote_close: true };
                }
                Closing { .. } | Failing { .. } => self.half_close(now, &mut out),
                Ended { .. } => self.state = Ended { wrote_close: true },
                _ => {}
            },
            Input::Eof => {
                if self.reading != Reading::Drain {
                    return out;
                }
                match self.state {
                    // The replies queued for the peer, then our close frame, still go out.
                    PeerClosed | Closing { .. } if self.peer.is_some() => {
                        self.reading = Reading::Eof;
                    }
                    Failing { .. } | HalfClosed => self.end(&mut out),
                    // No close frame from the peer: it vanished.
                    _ => {
                        self.record(Some(Termination::Io));
                        self.end(&mut out);
                    }
                }
            }
            Input::WriteBlocked => {
                if self.urgent() {
                    // The close frame cannot go out: the kernel takes nothing more.
                    self.record(Some(Termination::Overflow));
                    self.end(&mut out);
                }
            }
            Input::End(why) => {
                self.record(why);
                if !self.is_ended() {
                    self.end(&mut out);
                }
            }
        }
        out
    }

    fn record(&mut self, why: Option<Termination>) {
        if self.why.is_none() {
            self.why = why;
        }
    }

    fn arm(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = Some(now + Duration::from_millis(self.close_timeout_ms.into()));
        }
    }

    /// Queues `c` after the data (graceful close, or the reply to the peer's).
    fn queue(&mut self, c: CloseInfo, now: Instant, out: &mut Vec<Action>) {
        self.sent.get_or_insert_with(|| Box::new(c.clone()));
        self.arm(now);
        self.state = State::Closing { taken: false };
        out.push(Action::QueueClose(c));
    }

    fn half_close(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.state = State::HalfClosed;
        match self.reading {
            Reading::Parse => self.reading = Reading::Drain,
            Reading::Nothing => self.linger(now),
            Reading::Drain | Reading::Eof => {}
        }
        out.push(Action::ShutdownWrite);
        out.push(Action::WakeReader);
    }

    /// A flooder: nothing more is read, and its connection ends shortly after our close frame,
    /// once it has had time to read why (never later than the deadline already set).
    fn linger(&mut self, now: Instant) {
        let soon = now + Duration::from_millis(self.linger_ms.into());
        self.deadline = Some(self.deadline.map_or(soon, |d| d.min(soon)));
    }

    fn end(&mut self, out: &mut Vec<Action>) {
        let wrote_close = matches!(self.state, State::AwaitingPeer | State::HalfClosed);
        self.state = State::Ended { wrote_close };
        self.reading = Reading::Nothing;
        let reset = matches!(
            self.why,
            Some(
                Termination::Overflow
                    | Termination::ResyncOverflow
                    | Termination::PongTimeout
                    | Termination::Requested
                    | Termination::RateLimited
            )
        );
        out.push(Action::End { reset });
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::Failure::*;
    use super::State::*;
    use super::*;

    const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    const LINGER: Duration = Duration::from_secs(1);

    fn ours() -> CloseInfo {
        CloseInfo::new(1000, "bye")
    }
    fn peers() -> CloseInfo {
        CloseInfo::new(4000, "peer")
    }
    fn failed() -> CloseInfo {
        CloseInfo::new(1002, "fail")
    }
    fn close() -> Input {
        Input::Close(ours())
    }
    fn peer(defer: bool) -> Input {
        Input::PeerClose {
            close: peers(),
            defer,
        }
    }
    fn fail(why: Failure) -> Input {
        Input::Fail {
            close: failed(),
            why,
        }
    }

    /// The configurations the table starts from, each reached from a new machine by its inputs
    /// at `t0`; the input under test comes at `t0 + 1 s`.
    fn setups() -> Vec<(&'static str, Vec<Input>)> {
        use Input::*;
        let awaiting = vec![close(), CloseTaken, CloseWritten];
        let with = |mut a: Vec<Input>, more: &[Input]| {
            a.extend_from_slice(more);
            a
        };
        vec![
            ("open", vec![]),
            ("open_drain", vec![ParserDone]),
            ("peer_closed", vec![peer(true)]),
            ("peer_closed_eof", vec![peer(true), Eof]),
            ("closing", vec![close()]),
            ("closing_taken", vec![close(), CloseTaken]),
            ("closing_drain", vec![close(), ParserDone]),
            ("closing_p", vec![peer(false)]),
            ("closing_p_eof", vec![peer(false), Eof]),
            ("failing", vec![fail(Protocol)]),
            ("failing_urgent", vec![fail(Overflow)]),
            ("failing_taken_urgent", vec![fail(Overflow), CloseTaken]),
            ("failing_rate", vec![fail(RateLimited)]),
            ("awaiting", awaiting.clone()),
            ("awaiting_drain", with(awaiting.clone(), &[ParserDone])),
            ("half_closed", with(awaiting.clone(), &[peer(false)])),
            (
                "half_closed_rate",
                vec![fail(RateLimited), CloseTaken, CloseWritten],
            ),
            ("ended", vec![End(Some(Termination::Requested))]),
            ("ended_wrote", with(awaiting, &[peer(false), Eof])),
        ]
    }

    /// Every input the machine takes, but `End` (checked for every state apart, below).
    fn inputs() -> Vec<Input> {
        use Input::*;
        vec![
            close(),
            peer(true),
            peer(false),
            AnswerClose,
            fail(Protocol),
            fail(RateLimited),
            fail(Overflow),
            ParserDone,
            CloseTaken,
            CloseWritten,
            Eof,
            WriteBlocked,
        ]
    }

    struct Row {
        from: &'static str,
        input: Input,
        state: State,
        reading: Reading,
        /// Seconds after t0.
        deadline: Option<u64>,
        actions: Vec<Action>,
    }

    fn row(
        from: &'static str,
        input: Input,
        state: State,
        reading: Reading,
        deadline: Option<u64>,
        actions: &[Action],
    ) -> Row {
        Row {
            from,
            input,
            state,
            reading,
            deadline,
            actions: actions.to_vec(),
        }
    }

    /// The transition table of the module doc, row by row, for each configuration it applies to
    /// (one row a line, as in the doc).
    #[rustfmt::skip]
    fn table() -> Vec<Row> {
        use Reading::*;
        let cl = |taken| Closing { taken };
        let fl = |taken, urgent| Failing { taken, urgent };
        let qc = || QueueClose(ours());
        let qp = || QueueClose(peers());
        let qf = || QueueCloseNow(failed());
        let sw = [ShutdownWrite, WakeReader];
        let end = |reset| [End { reset }];
        let ended = Ended { wrote_close: false };
        let wrote = Ended { wrote_close: true };
        let (answer, parser_done, taken, written, eof, blocked) = (
            Input::AnswerClose, Input::ParserDone, Input::CloseTaken, Input::CloseWritten,
            Input::Eof, Input::WriteBlocked,
        );
        let mut t = vec![
            // Close
            row("open", close(), cl(false), Parse, Some(6), &[qc(), WakeReader]),
            row("open_drain", close(), cl(false), Drain, Some(6), &[qc(), WakeReader]),
            row("peer_closed", close(), cl(false), Drain, Some(5), &[qc(), WakeReader]),
            row("peer_closed_eof", close(), cl(false), Eof, Some(5), &[qc(), WakeReader]),
            // PeerClose, deferred and not
            row("open", peer(true), PeerClosed, Drain, Some(6), &[ReportPeerClose]),
            row("open", peer(false), cl(false), Drain, Some(6), &[qp()]),
            row("closing", peer(true), cl(false), Drain, Some(5), &[ReportPeerClose]),
            row("closing", peer(false), cl(false), Drain, Some(5), &[]),
            row("closing_taken", peer(true), cl(true), Drain, Some(5), &[ReportPeerClose]),
            row("closing_taken", peer(false), cl(true), Drain, Some(5), &[]),
            row("failing_urgent", peer(true), fl(false, true), Drain, Some(5), &[ReportPeerClose]),
            row("failing_urgent", peer(false), fl(false, true), Drain, Some(5), &[]),
            row("failing_taken_urgent", peer(true), fl(true, true), Drain, Some(5), &[ReportPeerClose]),
            row("failing_taken_urgent", peer(false), fl(true, true), Drain, Some(5), &[]),
            row("awaiting", peer(true), HalfClosed, Drain, Some(5), &[ReportPeerClose, ShutdownWrite, WakeReader]),
            row("awaiting", peer(false), HalfClosed, Drain, Some(5), &sw),
            // AnswerClose
            row("peer_closed", answer.clone(), cl(false), Drain, Some(5), &[qp(), WakeReader]),
            row("peer_closed_eof", answer, cl(false), Eof, Some(5), &[qp(), WakeReader]),
            // ParserDone
            row("open", parser_done.clone(), Open, Drain, None, &[]),
            row("closing", parser_done.clone(), cl(false), Drain, Some(5), &[]),
            row("closing_taken", parser_done.clone(), cl(true), Drain, Some(5), &[]),
            row("failing_urgent", parser_done.clone(), fl(false, true), Drain, Some(5), &[]),
            row("failing_taken_urgent", parser_done.clone(), fl(true, true), Drain, Some(5), &[]),
            row("awaiting", parser_done, AwaitingPeer, Drain, Some(5), &[]),
            // CloseTaken
            row("closing", taken.clone(), cl(true), Parse, Some(5), &[]),
            row("closing_drain", taken.clone(), cl(true), Drain, Some(5), &[]),
            row("closing_p", taken.clone(), cl(true), Drain, Some(5), &[]),
            row("closing_p_eof", taken.clone(), cl(true), Eof, Some(5), &[]),
            row("failing", taken.clone(), fl(true, false), Drain, Some(5), &[]),
            row("failing_urgent", taken.clone(), fl(true, true), Parse, Some(5), &[]),
            row("failing_rate", taken, fl(true, true), Nothing, Some(5), &[]),
            // CloseWritten
            row("closing", written.clone(), AwaitingPeer, Parse, Some(5), &[WakeReader]),
            row("closing_taken", written.clone(), AwaitingPeer, Parse, Some(5), &[WakeReader]),
            row("closing_drain", written.clone(), AwaitingPeer, Drain, Some(5), &[WakeReader]),
            row("closing_p", written.clone(), HalfClosed, Drain, Some(5), &sw),
            row("closing_p_eof", written.clone(), wrote, Nothing, Some(5), &end(false)),
            row("failing", written.clone(), HalfClosed, Drain, Some(5), &sw),
            row("failing_urgent", written.clone(), HalfClosed, Drain, Some(5), &sw),
            row("failing_taken_urgent", written.clone(), HalfClosed, Drain, Some(5), &sw),
            // The flooder's linger: min(5 s, 1 s + 1 s).
            row("failing_rate", written.clone(), HalfClosed, Nothing, Some(2), &sw),
            row("ended", written, wrote, Nothing, None, &[]),
            // Eof
            row("open_drain", eof.clone(), ended, Nothing, None, &end(false)),
            row("peer_closed", eof.clone(), PeerClosed, Eof, Some(5), &[]),
            row("closing_drain", eof.clone(), ended, Nothing, Some(5), &end(false)),
            row("closing_p", eof.clone(), cl(false), Eof, Some(5), &[]),
            row("failing", eof.clone(), ended, Nothing, Some(5), &end(false)),
            row("awaiting_drain", eof.clone(), wrote, Nothing, Some(5), &end(false)),
            row("half_closed", eof, wrote, Nothing, Some(5), &end(false)),
            // WriteBlocked
            row("failing_urgent", blocked.clone(), ended, Nothing, Some(5), &end(true)),
            row("failing_taken_urgent", blocked.clone(), ended, Nothing, Some(5), &end(true)),
            row("failing_rate", blocked, ended, Nothing, Some(5), &end(true)),
            // A flooder seen after the write side is shut is read no more either.
            row("half_closed", fail(RateLimited), HalfClosed, Nothing, Some(2), &[WakeReader]),
        ];
        // Fail, by kind: (kind, what Parse becomes, what Drain becomes, urgent).
        for (why, parse, drain, urgent) in [
            (Protocol, Drain, Drain, false),
            (RateLimited, Nothing, Nothing, true),
            (Overflow, Parse, Drain, true),
        ] {
            let f = || fail(why);
            let qfw: Vec<Action> = if urgent {
                vec![qf(), WakeWriter, WakeReader]
            } else {
                vec![qf(), WakeReader]
            };
            let u = |was: bool| was || urgent;
            // After a half-close, the flooder's linger: min(5 s, 1 s + 1 s).
            let lingers = |r: Reading| Some(if r == Nothing { 2 } else { 5 });
            t.extend([
                row("open", f(), fl(false, u(false)), parse, Some(6), &qfw),
                row("open_drain", f(), fl(false, u(false)), drain, Some(6), &qfw),
                row("peer_closed", f(), fl(false, u(false)), drain, Some(5), &qfw),
                // The first cause counts: the setups' causes reset, Protocol does not.
                row("peer_closed_eof", f(), ended, Nothing, Some(5), &end(urgent)),
                row("closing", f(), fl(false, u(false)), parse, Some(5), &qfw),
                row("closing_taken", f(), fl(true, u(false)), parse, Some(5), &[WakeReader]),
                row("closing_drain", f(), fl(false, u(false)), drain, Some(5), &qfw),
                row("closing_p", f(), fl(false, u(false)), drain, Some(5), &qfw),
                row("closing_p_eof", f(), ended, Nothing, Some(5), &end(urgent)),
                row("failing", f(), fl(false, u(false)), drain, Some(5), &qfw),
                row("failing_urgent", f(), fl(false, true), parse, Some(5), &qfw),
                row("failing_taken_urgent", f(), fl(true, true), parse, Some(5), &[WakeReader]),
                row("failing_rate", f(), fl(false, true), Nothing, Some(5), &qfw),
                row("awaiting", f(), HalfClosed, drain, lingers(parse), &sw),
                row("awaiting_drain", f(), HalfClosed, drain, lingers(drain), &sw),
            ]);
        }
        t
    }

    fn start(inputs: &[Input], t0: Instant) -> Lifecycle {
        let mut l = Lifecycle::new(CLOSE_TIMEOUT, LINGER);
        for i in inputs {
            l.on(i.clone(), t0);
        }
        l
    }

    fn cause(i: &Input) -> Option<Termination> {
        match i {
            Input::Fail { why, .. } => Some(why.termination()),
            Input::End(w) => *w,
            _ => None,
        }
    }

    /// Every row of the table, and every other (configuration, input) pair left alone.
    #[test]
    fn every_transition_of_the_table_and_nothing_else() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let table = table();
        let setups = setups();
        for r in &table {
            assert!(
                setups.iter().any(|(n, _)| *n == r.from),
                "unknown setup {}",
                r.from
            );
        }
        let mut used = vec![false; table.len()];
        for (name, setup) in &setups {
            let before = start(setup, t0);
            for input in inputs() {
                let mut l = before.clone();
                let actions = l.on(input.clone(), t1);
                let found = table
                    .iter()
                    .position(|r| r.from == *name && r.input == input);
                let ctx = format!("{name} × {input:?}");
                match found {
                    Some(i) => {
                        used[i] = true;
                        let r = &table[i];
                        assert_eq!(actions, r.actions, "{ctx}: actions");
                        assert_eq!(l.state(), r.state, "{ctx}: state");
                        assert_eq!(l.reading(), r.reading, "{ctx}: reading");
                        assert_eq!(
                            l.deadline(),
                            r.deadline.map(|s| t0 + Duration::from_secs(s)),
                            "{ctx}: deadline"
                        );
                    }
                    None => {
                        assert!(actions.is_empty(), "{ctx}: ignored, yet {actions:?}");
                        // The cause of an ignored Fail is still recorded if none was.
                        assert_eq!(l.why, before.why.or(cause(&input)), "{ctx}: cause");
                        let mut same = l.clone();
                        same.why = before.why;
                        assert_eq!(same, before, "{ctx}: ignored, yet changed");
                    }
                }
                assert_eq!(
                    l.is_open(),
                    matches!(l.state(), Open | PeerClosed),
                    "{ctx}: is_open"
                );
            }
        }
        let unused: Vec<_> = table
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(r, _)| format!("{} × {:?}", r.from, r.input))
            .collect();
        assert!(unused.is_empty(), "rows never reached: {unused:?}");
    }

    /// `End(c)` from every configuration: once, with a reset by the first cause, then ignored.
    #[test]
    fn end_from_every_state_once_and_reset_by_the_first_cause() {
        let t0 = Instant::now();
        let resets = |w: Option<Termination>| {
            matches!(
                w,
                Some(
                    Termination::Overflow
                        | Termination::ResyncOverflow
                        | Termination::PongTimeout
                        | Termination::Requested
                        | Termination::RateLimited
                )
            )
        };
        let causes = [
            None,
            Some(Termination::Requested),
            Some(Termination::Io),
            Some(Termination::PongTimeout),
            Some(Termination::CloseTimeout),
            Some(Termination::RateLimited),
        ];
        for (name, setup) in setups() {
            for c in causes {
                let mut l = start(&setup, t0);
                let before = l.clone();
                let a = l.on(Input::End(c), t0);
                let first = before.why.or(c);
                assert_eq!(l.why, first, "{name} × End({c:?})");
                if before.is_ended() {
                    assert!(a.is_empty(), "{name}: a second end does nothing");
                    assert_eq!(l.state(), before.state());
                    continue;
                }
                assert_eq!(
                    a,
                    [End {
                        reset: resets(first)
                    }],
                    "{name} × End({c:?})"
                );
                let wrote = matches!(before.state(), AwaitingPeer | HalfClosed);
                assert_eq!(l.state(), Ended { wrote_close: wrote }, "{name}");
                assert_eq!(l.reading(), Reading::Nothing);
                assert!(!l.is_open() && l.is_ended() && !l.urgent());
                // Ended ignores everything but recording its first cause.
                let again = l.clone();
                for i in inputs() {
                    if i == Input::CloseWritten {
                        continue;
                    }
                    let mut m = again.clone();
                    assert!(m.on(i.clone(), t0).is_empty(), "{name}: ended × {i:?}");
                    assert_eq!(m.state(), again.state());
                }
                assert!(l
                    .on(Input::End(Some(Termination::Requested)), t0)
                    .is_empty());
            }
        }
    }

    #[test]
    fn failures_map_to_causes_urgency_and_reading() {
        for (f, t, urgent, reading) in [
            (Protocol, Termination::Protocol, false, Reading::Drain),
            (
                PartialBudget,
                Termination::PartialBudget,
                false,
                Reading::Drain,
            ),
            (
                RateLimited,
                Termination::RateLimited,
                true,
                Reading::Nothing,
            ),
            (Overflow, Termination::Overflow, true, Reading::Parse),
            (
                ResyncOverflow,
                Termination::ResyncOverflow,
                true,
                Reading::Parse,
            ),
        ] {
            assert_eq!(f.termination(), t);
            assert_eq!(f.urgent(), urgent, "{f:?}");
            assert_eq!(f.reading(), reading, "{f:?}");
            let mut l = Lifecycle::new(CLOSE_TIMEOUT, LINGER);
            l.on(fail(f), Instant::now());
            assert_eq!(l.urgent(), urgent, "{f:?}");
            assert_eq!(l.reading(), reading, "{f:?}");
        }
    }

    /// Whole lives, each input in order, with what the server reports at the end.
    #[test]
    fn whole_lives_report_the_right_close_event_and_cause() {
        use Input::*;
        let t0 = Instant::now();
        let abnormal = CloseInfo::new(1006, "");
        let going_away = CloseInfo::new(1001, "server closing");
        let lives: Vec<(&str, Vec<Input>, CloseInfo, Option<Termination>)> = vec![
            // Server first, then the peer's close, then its FIN.
            (
                "server first",
                vec![close(), CloseTaken, CloseWritten, peer(true), Eof],
                peers(),
                None,
            ),
            // Server first, the peer's FIN without its close frame (the parser: an I/O error).
            (
                "server close, peer vanishes",
                vec![
                    Close(going_away.clone()),
                    CloseTaken,
                    CloseWritten,
                    End(Some(Termination::Io)),
                ],
                going_away.clone(),
                Some(Termination::Io),
            ),
            // Peer first: JavaScript is told, answers; the reply goes out; FIN.
            (
                "peer first, answered",
                vec![peer(true), AnswerClose, CloseTaken, CloseWritten, Eof],
                peers(),
                None,
            ),
            // Peer first, its FIN at once: the reply still goes out, then the end.
            (
                "peer first then FIN",
                vec![peer(true), Eof, AnswerClose, CloseTaken, CloseWritten],
                peers(),
                None,
            ),
            // Peer first, JavaScript closes instead of answering.
            (
                "peer first, close() answers",
                vec![peer(true), close(), CloseTaken, CloseWritten, Eof],
                peers(),
                None,
            ),
            // Our close is never answered.
            (
                "close timeout",
                vec![
                    close(),
                    CloseTaken,
                    CloseWritten,
                    End(Some(Termination::CloseTimeout)),
                ],
                ours(),
                Some(Termination::CloseTimeout),
            ),
            // Our close never even got out.
            (
                "close timeout, unwritten",
                vec![close(), End(Some(Termination::CloseTimeout))],
                abnormal.clone(),
                Some(Termination::CloseTimeout),
            ),
            // Overflow: the close frame goes first, out, write side shut; the peer's FIN.
            (
                "overflow",
                vec![fail(Overflow), CloseTaken, CloseWritten, Eof],
                failed(),
                Some(Termination::Overflow),
            ),
            // Overflow and a socket that takes nothing.
            (
                "overflow, blocked",
                vec![fail(Overflow), CloseTaken, WriteBlocked],
                abnormal.clone(),
                Some(Termination::Overflow),
            ),
            // Rate limited: close frame out, then the linger's end (the close deadline).
            (
                "rate limited",
                vec![
                    fail(RateLimited),
                    CloseTaken,
                    CloseWritten,
                    End(Some(Termination::CloseTimeout)),
                ],
                failed(),
                Some(Termination::RateLimited),
            ),
            (
                "pong timeout",
                vec![End(Some(Termination::PongTimeout))],
                abnormal.clone(),
                Some(Termination::PongTimeout),
            ),
            (
                "terminate twice",
                vec![
                    close(),
                    End(Some(Termination::Requested)),
                    End(Some(Termination::Io)),
                ],
                abnormal.clone(),
                Some(Termination::Requested),
            ),
            (
                "io error",
                vec![End(Some(Termination::Io))],
                abnormal.clone(),
                Some(Termination::Io),
            ),
            // As today: a cause given after an end without one is still recorded (reported to the
            // lead: a `terminate()` after a graceful end counts as requested).
            (
                "cause after the end",
                vec![
                    close(),
                    CloseTaken,
                    CloseWritten,
                    peer(false),
                    Eof,
                    End(Some(Termination::Requested)),
                ],
                peers(),
                Some(Termination::Requested),
            ),
            // As today: a failure replacing our queued close frame reports the first one queued
            // (reported to the lead).
            (
                "close replaced by a failure",
                vec![
                    close(),
                    fail(Protocol),
                    CloseTaken,
                    CloseWritten,
                    End(Some(Termination::CloseTimeout)),
                ],
                ours(),
                Some(Termination::Protocol),
            ),
            // Our close crossed the end: it is still the one reported.
            (
                "written after the end",
                vec![
                    close(),
                    CloseTaken,
                    End(Some(Termination::Requested)),
                    CloseWritten,
                ],
                ours(),
                Some(Termination::Requested),
            ),
        ];
        for (name, inputs, event, why) in lives {
            let mut l = Lifecycle::new(CLOSE_TIMEOUT, LINGER);
            let mut ends = 0;
            for i in inputs {
                ends += l
                    .on(i, t0)
                    .iter()
                    .filter(|a| matches!(a, Action::End { .. }))
                    .count();
            }
            assert!(l.is_ended(), "{name}: ended");
            assert_eq!(ends, 1, "{name}: one end");
            assert_eq!(l.close_event(), event, "{name}: close event");
            assert_eq!(l.termination(), why, "{name}: cause");
        }
    }

    #[test]
    fn the_module_doc_example_holds() {
        let (close_timeout, linger, now) = (CLOSE_TIMEOUT, LINGER, Instant::now());
        let mut life = Lifecycle::new(close_timeout, linger);
        let a = life.on(Input::Close(CloseInfo::new(1000, "bye")), now);
        assert_eq!(
            a,
            [
                Action::QueueClose(CloseInfo::new(1000, "bye")),
                Action::WakeReader
            ]
        );
        life.on(Input::CloseTaken, now);
        life.on(Input::CloseWritten, now); // AwaitingPeer
        let a = life.on(
            Input::PeerClose {
                close: CloseInfo::new(1000, ""),
                defer: false,
            },
            now,
        );
        assert_eq!(a, [Action::ShutdownWrite, Action::WakeReader]); // HalfClosed
        assert_eq!(life.on(Input::Eof, now), [Action::End { reset: false }]);
        assert_eq!(life.close_event(), CloseInfo::new(1000, ""));
    }

    /// The deadline starts at the first close either way and is never pushed back.
    #[test]
    fn the_close_deadline_runs_from_the_first_close_and_only_shrinks() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(CLOSE_TIMEOUT, LINGER);
        assert_eq!(l.deadline(), None);
        l.on(peer(true), t0);
        assert_eq!(l.deadline(), Some(t0 + CLOSE_TIMEOUT));
        l.on(Input::AnswerClose, t0 + Duration::from_secs(3));
        assert_eq!(l.deadline(), Some(t0 + CLOSE_TIMEOUT));
        // A linger past the deadline does not extend it.
        let mut l = Lifecycle::new(CLOSE_TIMEOUT, Duration::from_secs(60));
        l.on(fail(RateLimited), t0);
        l.on(Input::CloseTaken, t0);
        l.on(Input::CloseWritten, t0);
        assert_eq!(l.deadline(), Some(t0 + CLOSE_TIMEOUT));
    }
}
