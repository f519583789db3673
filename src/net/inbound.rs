//! What one client can make the server do by sending: the reader's bounds, as plain state.
//!
//! A connection's reader (in `connection.rs`) parses with tungstenite and reads the socket through
//! [`Inbound`], which sees every byte before tungstenite does. From those bytes alone it knows
//! the frame boundaries ([`FrameTracker`]) and so enforces, without a socket or a clock of its own:
//!
//! | bound | scope | when reached | counted in `metrics()` |
//! |---|---|---|---|
//! | [`READ_BUDGET_BYTES`] / [`READ_BUDGET_FRAMES`] per wake-up | connection | the reader yields its worker thread to the other connections, then goes on | `inbound.yields` |
//! | `maxInboundBytesPerSecond`, `maxInboundFramesPerSecond` over `inboundRateWindow` ([`TokenBucket`]) | connection | closed with 1008, no more bytes read, reset [`RATE_LIMITED_LINGER`] after the close frame | `terminated.rateLimited` |
//! | `maxPartialMessageBytes` ([`PartialBudget`]) | server | the reader stops reading until room frees up; after [`PARTIAL_ROOM_TIMEOUT`] closed with 1013 | `inbound.partialPauses`, `terminated.partialBudget` |
//! | pending events (bytes and count, `events.rs`) | server | every reader pauses until JavaScript catches up | `inbound.eventQueuePauses` |
//!
//! Every frame counts, control frames too: a ping flood is inbound work (its pongs are bounded
//! separately, by the outbox's control lane).
//!
//! **Partly received messages.** tungstenite reserves a data frame's whole announced length when
//! it reads the frame's header, and gathers the fragments of a fragmented message in a buffer of
//! its own until the last one. Neither is visible from outside, so the reader reserves for it:
//! when a header shows that what tungstenite will hold for the message in progress exceeds
//! [`PARTIAL_FREE_BYTES`], that much is reserved in the server-wide [`PartialBudget`], and
//! released when the message is complete (or the connection ends). A
//! reservation that does not fit stops the reader before it reads any further bytes; a frame whose
//! reservation succeeded can always be completed, so the readers holding the budget make progress
//! and free it, and a message alone always proceeds. What is reserved, from a frame's header on,
//! is what tungstenite will hold once that frame is in: a read buffer as large as the message's
//! largest frame, and for a fragmented message a copy of each fragment too (so a fragmented
//! message reserves up to twice its size). A connection overshoots its reservation by at most one
//! read (`READ_BUFFER_SIZE`).
//!
//! ```text
//! socket ──► Inbound::may_read (budget spent? room? limit?) ──► try_read ──► Inbound::consumed ──► tungstenite ──► events
//!                                                                            │ FrameTracker: headers, lengths, message ends
//!                                                                            │ TokenBuckets: bytes, frames
//!                                                                            └ PartialBudget (server-wide, atomic)
//! ```
//!
//! **Protocol state.** [`context`] is the tungstenite state machine each reader runs, configured
//! from the server's options ([`ws_config`]), and [`close_for`] the close code a protocol error
//! fails the connection with; the fuzz harness (`fuzz.rs`) drives the same machine on bytes in
//! memory, split as a network might split them.
//!
//! | inbound | close code |
//! |---|---|
//! | text that is not UTF-8 | 1007 |
//! | a message or frame over `maxPayload` | 1009 |
//! | any other protocol violation (masking, opcodes, RSV bits, control frames, fragmentation) | 1002 |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::core::config::{Config, RateLimits, READ_BUFFER_SIZE};
use crate::wire::close::CloseCode;
use crate::wire::frame::RSV1;

/// Bytes a reader reads from one connection before it lets the other tasks of its worker thread
/// run (`tokio::task::yield_now`). 64 KiB is 64 reads of `READ_BUFFER_SIZE`, about 0.1 ms of
/// system calls here: a flooding client delays another client's broadcast by that much per wake-up
/// at most, while a large message is still read at hundreds of MB/s.
pub(crate) const READ_BUDGET_BYTES: usize = 64 * 1024;
/// Frames (control frames included) a reader handles per wake-up before it yields. 256 empty or
/// tiny frames cost CPU of the same order as [`READ_BUDGET_BYTES`] of large ones (a few hundred
/// µs): each is parsed and most become an event.
pub(crate) const READ_BUDGET_FRAMES: u64 = 256;
/// A message in progress up to this size is not reserved in [`PartialBudget`]: it is within the
/// memory every connection has anyway (its read buffer), and the budget's counter is then only
/// touched by messages that are large.
pub(crate) const PARTIAL_FREE_BYTES: usize = READ_BUFFER_SIZE;
/// How long a reader waits for room under `maxPartialMessageBytes` before it closes its
/// connection with 1013 (Try Again Later). The room is held by other partly received messages: a
/// client that cannot get any within 5 s (the default `handshakeTimeout` and `closeTimeout` too)
/// is better told to come back than left hanging.
pub(crate) const PARTIAL_ROOM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection closed for its rate is kept once its close frame is in the kernel (our
/// side half-closed, nothing read) before it is reset: time for the client to read the 1008 and
/// its reason, which a reset at once could destroy unread. It costs a socket, no CPU.
pub(crate) const RATE_LIMITED_LINGER: Duration = Duration::from_secs(1);
/// Largest client frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// A token bucket: `rate` tokens per second, at most `capacity`, full at the start. A client
/// exceeds the limit when it spends more than there is.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    level: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        Self {
            rate,
            capacity,
            level: capacity,
            last: now,
        }
    }

    /// Spends `n` tokens at `now`; false if there were not enough (the limit is exceeded).
    pub(crate) fn spend(&mut self, n: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + dt * self.rate).min(self.capacity) - n;
        self.level >= 0.0
    }
}

/// Frame boundaries in the raw bytes a client sends, without parsing payloads: a frame header
/// (2 to 14 bytes), then the payload it announces. Garbage gives garbage lengths, never a panic;
/// tungstenite rejects such a stream itself.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    head: [u8; MAX_HEADER],
    /// Header bytes collected so far (while `left` is `None`).
    have: usize,
    /// Payload bytes of the current frame still to come; `None` while reading a header.
    left: Option<u64>,
    /// The current frame is a data frame (text, binary, continuation) / has FIN set.
    data: bool,
    fin: bool,
    /// Payload of the complete fragments of the data message in progress (tungstenite has copied
    /// them into a buffer of their own). 0 between messages.
    done: u64,
    /// Announced length of the data frame being read; 0 between data frames.
    cur: u64,
    /// Largest data frame length announced in the message in progress, the current frame's
    /// included: tungstenite's read buffer grows to it and stays that size.
    largest: u64,
    /// The message in progress is fragmented: each fragment is copied once complete.
    fragmented: bool,
    /// Messages complete so far (data messages and control frames), i.e. what tungstenite has
    /// to return one by one.
    messages: u64,
    /// permessage-deflate was negotiated: data messages are marked in `kinds`, and a compressed
    /// one's first header is rewritten for tungstenite ([`FrameTracker::feed`]).
    deflate: bool,
    /// Whether each data message begun and not yet returned by tungstenite is compressed (and
    /// if so, text): one entry per message, in order; [`Self::next_kind`] takes them.
    kinds: std::collections::VecDeque<Kind>,
}

/// What a data message was on the wire (permessage-deflate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    /// RSV1 set: compressed; `text` if its opcode was text (tungstenite sees it as binary).
    Compressed {
        text: bool,
    },
}

impl FrameTracker {
    /// Feeds bytes in the order they were read; returns how many frame headers they completed.
    ///
    /// With permessage-deflate, the first byte of a compressed message's first frame (RSV1 set,
    /// text or binary) is rewritten in place before tungstenite reads it, which would refuse
    /// RSV1: RSV1 cleared and the opcode made binary (a compressed text is not UTF-8 until
    /// inflated); what it was goes to [`Self::next_kind`]. RSV1 on a continuation or control
    /// frame is left for tungstenite to refuse (1002), as RFC 7692 §6.1 wants.
    pub(crate) fn feed(&mut self, mut bytes: &mut [u8]) -> u64 {
        let mut headers = 0;
        while !bytes.is_empty() {
            match self.left {
                None => {
                    if self.have == 0 && self.deflate {
                        self.mark(&mut bytes[0]);
                    }
                    let need = if self.have < 2 {
                        2
                    } else {
                        header_len(self.head[1])
                    };
                    let take = (need - self.have).min(bytes.len());
                    self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &mut std::mem::take(&mut bytes)[take..];
                    if self.have >= 2 && self.have == header_len(self.head[1]) {
                        headers += 1;
                        self.start_frame();
                    }
                }
                Some(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &mut std::mem::take(&mut bytes)[take as usize..];
                    self.left = Some(left - take);
                    if left == take {
                        self.end_frame();
                    }
                }
            }
        }
        headers
    }

    /// The first byte of a frame header, with permessage-deflate (see [`Self::feed`]).
    fn mark(&mut self, b0: &mut u8) {
        let opcode = *b0 & 0x0f;
        if opcode != 1 && opcode != 2 {
            return;
        }
        if *b0 & RSV1 != 0 {
            self.kinds.push_back(Kind::Compressed { text: opcode == 1 });
            *b0 = (*b0 & !(RSV1 | 0x0f)) | 2;
        } else {
            self.kinds.push_back(Kind::Plain);
        }
    }

    /// What the next data message tungstenite returns was on the wire.
    pub(crate) fn next_kind(&mut self) -> Kind {
        self.kinds.pop_front().unwrap_or(Kind::Plain)
    }

    fn start_frame(&mut self) {
        let b0 = self.head[0];
        let b1 = self.head[1];
        let len = match b1 & 0x7f {
            126 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 header bytes")),
            n => n as u64,
        };
        let opcode = b0 & 0x0f;
        self.fin = b0 & 0x80 != 0;
        self.data = opcode & 0x08 == 0;
        self.have = 0;
        if self.data {
            if opcode != 0 {
                // A new message (a text or binary frame); a continuation adds to the current one.
                self.done = 0;
                self.largest = 0;
                self.fragmented = !self.fin;
            }
            self.cur = len;
            self.largest = self.largest.max(len);
        }
        self.left = Some(len);
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        self.left = None;
        if !self.data {
            self.messages += 1;
        } else if self.fin {
            self.done = 0;
            self.cur = 0;
            self.largest = 0;
            self.fragmented = false;
            self.messages += 1;
        } else {
            self.done = self.done.saturating_add(self.cur);
            self.cur = 0;
        }
    }

    /// What tungstenite holds, or will hold once the current frame is complete, for the data
    /// message in progress, as soon as a frame's header is read: a read buffer as large as the
    /// message's largest frame, and for a fragmented message a copy of every fragment too. 0
    /// between messages.
    pub(crate) fn message_in_progress(&self) -> u64 {
        if self.fragmented {
            self.done
                .saturating_add(self.cur)
                .saturating_add(self.largest)
        } else {
            self.largest
        }
    }

    /// Payload announced so far for the data message in progress: its complete fragments and the
    /// whole length of its current frame. tungstenite refuses a message once this exceeds
    /// `maxPayload`.
    pub(crate) fn message_payload(&self) -> u64 {
        self.done.saturating_add(self.cur)
    }

    /// Messages (data messages and control frames) complete so far.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// True between frames with no message in progress: every byte fed so far belongs to
    /// complete messages.
    pub(crate) fn at_rest(&self) -> bool {
        self.left.is_none() && self.have == 0 && !self.fragmented && self.largest == 0
    }
}

/// Header length from its second byte: 2, plus 2 or 8 for an extended length, plus 4 for a mask.
fn header_len(b1: u8) -> usize {
    2 + match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    } + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// The server-wide bound on bytes held in partly received messages (`maxPartialMessageBytes`).
#[derive(Debug)]
pub(crate) struct PartialBudget {
    /// Bytes reserved by all connections. Changed by each connection's reader for its own
    /// reservation (fetch_add / fetch_sub of its delta). Relaxed: it guards no other memory; a
    /// reservation that races past the bound by one delta is undone at once (see `reserve`).
    reserved: AtomicUsize,
    /// `usize::MAX`: no bound.
    max: usize,
    /// Notified when a reservation shrinks: stopped readers try again.
    pub(crate) room: Notify,
}

impl PartialBudget {
    /// `max` 0: no bound.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            reserved: AtomicUsize::new(0),
            max: if max == 0 { usize::MAX } else { max },
            room: Notify::new(),
        }
    }

    /// Bytes reserved right now.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Reserves `n` more bytes for a reader that holds `own` already, if they fit, or if that
    /// reader is the only one holding any (one message alone always proceeds, however large);
    /// false (and nothing reserved) otherwise.
    fn reserve(&self, n: usize, own: usize) -> bool {
        let before = self.reserved.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) <= self.max || before == own {
            return true;
        }
        self.reserved.fetch_sub(n, Ordering::Relaxed);
        false
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.reserved.fetch_sub(n, Ordering::Relaxed);
            self.room.notify_waiters();
        }
    }
}

/// Why [`Inbound`] refused to read more for now (the reader then sees `WouldBlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// This wake-up's read budget is spent: yield, then go on.
    Yield,
    /// The message in progress needs room under `maxPartialMessageBytes`: wait for it.
    Room,
    /// The rate limit is exceeded: close with 1008.
    RateLimited,
}

/// One connection's inbound accounting: what it may still read now, and what it holds.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Where the client's byte stream stands in its frames: only while a frame or a message is
    /// under way, or messages read are not all returned yet ([`Self::rest`] lets it go). Boxed,
    /// so that an idle connection keeps 8 bytes here, not 112, in its reader's future.
    tracker: Option<Box<FrameTracker>>,
    /// Messages complete in the trackers let go so far: [`Self::messages`] goes on from them.
    messages_before: u64,
    /// permessage-deflate was negotiated: each new tracker marks compressed messages.
    deflate: bool,
    bytes: Option<TokenBucket>,
    frames: Option<TokenBucket>,
    budget: Arc<PartialBudget>,
    /// Bytes this connection holds reserved in `budget`.
    reserved: usize,
    /// A reservation of this total that did not fit yet.
    wanted: Option<usize>,
    max_payload: usize,
    wake_bytes: usize,
    wake_frames: u64,
    limited: bool,
    /// A frame of [`LARGE_FRAME`] or more was announced since the last [`Self::take_large_seen`].
    large_seen: bool,
}

/// A frame this large leaves tungstenite's read buffer grown to its size ([`Inbound::take_large_seen`]).
pub(crate) const LARGE_FRAME: u64 = 64 * 1024;

impl Inbound {
    pub(crate) fn new(limits: RateLimits, budget: Arc<PartialBudget>, now: Instant) -> Self {
        let window = limits.window.as_secs_f64();
        Self {
            tracker: None,
            messages_before: 0,
            deflate: false,
            bytes: limits.bytes_per_second.map(|r| {
                let r = r as f64;
                // One maxPayload message (and its header) always fits in a burst.
                let cap = (r * window).max((limits.max_payload + MAX_HEADER) as f64);
                TokenBucket::new(r, cap, now)
            }),
            frames: limits.frames_per_second.map(|r| {
                let r = r as f64;
                TokenBucket::new(r, (r * window).max(1.0), now)
            }),
            budget,
            reserved: 0,
            wanted: None,
            max_payload: limits.max_payload,
            wake_bytes: 0,
            wake_frames: 0,
            limited: false,
            large_seen: false,
        }
    }

    /// permessage-deflate was negotiated: compressed messages are marked (see [`FrameTracker::feed`]).
    /// Called before any byte is consumed: the trackers made from then on mark them.
    pub(crate) fn enable_deflate(&mut self) {
        debug_assert!(
            self.tracker.is_none(),
            "deflate enabled after bytes were read"
        );
        self.deflate = true;
    }

    /// What the next data message tungstenite returns was on the wire.
    pub(crate) fn next_kind(&mut self) -> Kind {
        self.tracker.as_mut().map_or(Kind::Plain, |t| t.next_kind())
    }

    /// A new wake-up of the reader: the per-wake-up budget starts again.
    pub(crate) fn begin_wake(&mut self) {
        self.wake_bytes = 0;
        self.wake_frames = 0;
    }

    /// Whether the reader may read now; `Err` says why not. A pending reservation is retried.
    pub(crate) fn may_read(&mut self) -> Result<(), Stop> {
        if self.limited {
            return Err(Stop::RateLimited);
        }
        if let Some(total) = self.wanted {
            if !self.set_reservation(total) {
                return Err(Stop::Room);
            }
            self.wanted = None;
        }
        if self.wake_bytes >= READ_BUDGET_BYTES || self.wake_frames >= READ_BUDGET_FRAMES {
            return Err(Stop::Yield);
        }
        Ok(())
    }

    /// Accounts bytes just read from the socket (or left over from the handshake).
    pub(crate) fn consumed(&mut self, bytes: &mut [u8], now: Instant) {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        let deflate = self.deflate;
        let tracker = self.tracker.get_or_insert_with(|| {
            Box::new(FrameTracker {
                deflate,
                ..FrameTracker::default()
            })
        });
        let frames = tracker.feed(bytes);
        let held = tracker.message_in_progress();
        let payload = tracker.message_payload();
        self.wake_bytes += len;
        self.wake_frames += frames;
        if let Some(b) = &mut self.bytes {
            if !b.spend(len as f64, now) {
                self.limited = true;
            }
        }
        if frames > 0 {
            if let Some(f) = &mut self.frames {
                if !f.spend(frames as f64, now) {
                    self.limited = true;
                }
            }
        }
        if held >= LARGE_FRAME {
            self.large_seen = true;
        }
        // What tungstenite holds for the message in progress, when it is worth reserving. A
        // message over maxPayload is refused by tungstenite as soon as it reads the header that
        // takes it over (1009): nothing to hold.
        let total = if held as usize > PARTIAL_FREE_BYTES && payload <= self.max_payload as u64 {
            held as usize
        } else {
            0
        };
        if !self.set_reservation(total) {
            self.wanted = Some(total);
        } else {
            self.wanted = None;
        }
    }

    /// Accounts bytes read after the protocol ended (discarded unparsed): they count against
    /// the byte rate and this wake-up's budget, and the message in progress will never complete,
    /// so its reservation goes.
    pub(crate) fn discarded(&mut self, n: usize, now: Instant) {
        self.wake_bytes += n;
        if let Some(b) = &mut self.bytes {
            if !b.spend(n as f64, now) {
                self.limited = true;
            }
        }
        self.set_reservation(0);
        self.wanted = None;
    }

    /// Bytes the socket carried beyond those [`Inbound::consumed`] (TLS records' headers and
    /// tags, and records without data): they count toward the wake-up's budget and the byte rate
    /// as data does, so that a client cannot make the server decrypt without limit for little
    /// plaintext.
    pub(crate) fn overhead(&mut self, n: usize, now: Instant) {
        self.wake_bytes += n;
        if let Some(b) = &mut self.bytes {
            if !b.spend(n as f64, now) {
                self.limited = true;
            }
        }
    }

    /// Sets this connection's reservation to `total`; false if the growth does not fit.
    fn set_reservation(&mut self, total: usize) -> bool {
        if total > self.reserved {
            if !self.budget.reserve(total - self.reserved, self.reserved) {
                return false;
            }
        } else {
            self.budget.release(self.reserved - total);
        }
        self.reserved = total;
        true
    }

    /// The rate limit was exceeded.
    pub(crate) fn rate_limited(&self) -> bool {
        self.limited
    }

    /// True if every byte read so far belongs to complete messages and tungstenite has returned
    /// all `returned` of them: its context then holds nothing a fresh one would not (an empty
    /// read buffer, no partial frame or message) and may be dropped until more bytes come.
    fn at_rest(&self, returned: u64) -> bool {
        self.tracker.as_ref().is_none_or(|t| t.at_rest()) && self.messages() == returned
    }

    /// [`Self::at_rest`], and then the frame tracker's storage goes too, until more bytes come: a
    /// fresh one would start where it stands (no partial frame, no message in progress, every
    /// compressed message's mark taken).
    pub(crate) fn rest(&mut self, returned: u64) -> bool {
        if !self.at_rest(returned) {
            return false;
        }
        if let Some(t) = self.tracker.take_if(|t| t.kinds.is_empty()) {
            self.messages_before += t.messages();
        }
        true
    }

    /// Messages (data messages and control frames) complete so far.
    fn messages(&self) -> u64 {
        self.messages_before + self.tracker.as_ref().map_or(0, |t| t.messages())
    }

    /// True if a large frame was announced since the last call, every byte read so far belongs
    /// to complete messages, and tungstenite has returned all `returned` of them: its read buffer
    /// then holds nothing, only the capacity that large frame left it, and may be replaced.
    pub(crate) fn take_large_seen(&mut self, returned: u64) -> bool {
        if self.large_seen && self.at_rest(returned) {
            self.large_seen = false;
            return true;
        }
        false
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

// ---- The protocol state of the inbound path ----
/// tungstenite's configuration for inbound frames: `maxPayload` bounds a frame and a whole
/// message; client frames must be masked; reads of [`READ_BUFFER_SIZE`].
pub(crate) fn ws_config(cfg: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_message_size(Some(cfg.max_payload))
        .max_frame_size(Some(cfg.max_payload))
        .accept_unmasked_frames(false)
}

/// The server side of a connection whose handshake is done; `leftover` is what the client sent
/// after its request head.
pub(crate) fn context(cfg: &Config, leftover: Vec<u8>) -> WebSocketContext {
    WebSocketContext::from_partially_read(leftover, Role::Server, Some(ws_config(cfg)))
}

/// The close code and reason for an error of [`WebSocketContext::read`] that fails the
/// connection (not I/O, not the end of the stream: the reader handles those itself).
pub(crate) fn close_for(e: &WsError) -> (CloseCode, &'static str) {
    match e {
        WsError::Utf8(_) => (CloseCode::InvalidPayload, "invalid UTF-8"),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (CloseCode::MessageTooBig, "message too big")
        }
        WsError::Protocol(_) | WsError::Capacity(_) => (CloseCode::ProtocolError, "protocol error"),
        _ => (CloseCode::InternalError, "internal error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if len < 126 {
            v.push(0x80 | len as u8);
        } else if len < 65536 {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend(std::iter::repeat_n(7u8, len));
        v
    }

    #[test]
    fn tracker_counts_frames_fed_in_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 2, 0));
        stream.extend(frame(true, 9, 125));
        stream.extend(frame(false, 1, 300));
        stream.extend(frame(true, 10, 3)); // a pong between fragments
        stream.extend(frame(true, 0, 70_000));
        for chunk in [1, 2, 3, 7, 1024, stream.len()] {
            let mut t = FrameTracker::default();
            let mut headers = 0;
            let mut max_msg = 0;
            for c in stream.chunks(chunk) {
                headers += t.feed(&mut c.to_vec());
                max_msg = max_msg.max(t.message_in_progress());
            }
            assert_eq!(headers, 5, "chunk {chunk}");
            if chunk < 1024 {
                // Seen between chunks: the 300-byte fragment, the 70,000-byte one and the read
                // buffer grown to 70,000 bytes.
                assert_eq!(max_msg, 140_300, "chunk {chunk}");
            }
            assert!(t.at_rest(), "chunk {chunk}");
            // Two data messages and two control frames.
            assert_eq!(t.messages(), 4, "chunk {chunk}");
        }
    }

    #[test]
    fn tracker_holds_an_unfinished_message() {
        let mut t = FrameTracker::default();
        let first = frame(false, 2, 1000);
        t.feed(&mut first[..10].to_vec());
        // From its header on: the read buffer the frame grows, and the fragment's copy.
        assert_eq!(t.message_in_progress(), 2000);
        assert_eq!(t.message_payload(), 1000);
        t.feed(&mut first[10..].to_vec());
        assert_eq!(t.message_in_progress(), 2000);
        assert!(!t.at_rest());
        let f = frame(true, 0, 500);
        t.feed(&mut f[..6 + 100].to_vec()); // header and part of the payload
        assert_eq!(t.message_in_progress(), 2500);
        assert_eq!(t.message_payload(), 1500);
        t.feed(&mut f[6 + 100..].to_vec());
        assert_eq!(t.message_in_progress(), 0);
        assert!(t.at_rest());
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn deflate_marks_compressed_messages_and_rewrites_their_first_header() {
        let mut stream = Vec::new();
        let mut first = frame(true, 1, 10);
        first[0] |= RSV1; // compressed text
        stream.extend(&first);
        stream.extend(frame(true, 2, 300)); // plain binary
        let mut frag = frame(false, 2, 5);
        frag[0] |= RSV1; // compressed binary, fragmented
        stream.extend(&frag);
        let mut ping = frame(true, 9, 1);
        ping[0] |= RSV1; // RSV1 on a control frame: left for tungstenite to refuse
        stream.extend(&ping);
        stream.extend(frame(true, 0, 5)); // the continuation
        for chunk in [1, 3, stream.len()] {
            let mut t = FrameTracker {
                deflate: true,
                ..FrameTracker::default()
            };
            let mut bytes = stream.clone();
            for c in bytes.chunks_mut(chunk) {
                t.feed(c);
            }
            assert_eq!(bytes[0], 0x82, "text made binary, RSV1 cleared");
            assert_eq!(bytes[first.len()], 0x82, "plain: untouched");
            let at = first.len() + frame(true, 2, 300).len();
            assert_eq!(bytes[at], 0x02, "fragment: RSV1 cleared, FIN kept unset");
            assert_eq!(
                bytes[at + frag.len()],
                0x80 | RSV1 | 9,
                "control: untouched"
            );
            let kinds: Vec<Kind> = (0..3).map(|_| t.next_kind()).collect();
            assert_eq!(
                kinds,
                [
                    Kind::Compressed { text: true },
                    Kind::Plain,
                    Kind::Compressed { text: false }
                ]
            );
        }
        // Without deflate nothing is rewritten.
        let mut t = FrameTracker::default();
        let mut bytes = first.clone();
        t.feed(&mut bytes);
        assert_eq!(bytes, first);
    }

    #[test]
    fn tracker_survives_garbage() {
        let mut t = FrameTracker::default();
        let junk: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for c in junk.chunks(13) {
            t.feed(&mut c.to_vec());
        }
        t.feed(&mut [0xff; 14].to_vec()); // a 2^63-byte frame
        t.feed(&mut [0; 4096].to_vec());
    }

    #[test]
    fn bucket_allows_the_rate_and_the_burst_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        assert!(b.spend(200.0, t0)); // the burst
        assert!(!b.spend(1.0, t0));
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        // 10 s at exactly the rate: never exceeded.
        for ms in 1..=10_000u64 {
            assert!(b.spend(0.1, t0 + Duration::from_millis(ms)), "{ms}");
        }
        // 10% over the rate, from a full bucket: exceeded once the burst is used up (~20 s).
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        let over = (1..=30_000u64)
            .find(|ms| !b.spend(0.11, t0 + Duration::from_millis(*ms)))
            .expect("exceeded");
        assert!((19_000..=21_000).contains(&over), "{over}");
    }

    fn limits(bytes: Option<u64>, frames: Option<u64>) -> RateLimits {
        RateLimits {
            bytes_per_second: bytes,
            frames_per_second: frames,
            window: Duration::from_secs(1),
            max_payload: 1 << 20,
        }
    }

    #[test]
    fn read_budget_per_wake_up() {
        let budget = Arc::new(PartialBudget::new(0));
        let now = Instant::now();
        let mut i = Inbound::new(limits(None, None), budget, now);
        i.begin_wake();
        let f = frame(true, 2, 0);
        for _ in 0..READ_BUDGET_FRAMES {
            assert_eq!(i.may_read(), Ok(()));
            i.consumed(&mut f.to_vec(), now);
        }
        assert_eq!(i.may_read(), Err(Stop::Yield));
        i.begin_wake();
        assert_eq!(i.may_read(), Ok(()));
        i.consumed(&mut vec![0u8; READ_BUDGET_BYTES], now); // inside no frame: a 0-length-header stream
        assert_eq!(i.may_read(), Err(Stop::Yield));
    }

    #[test]
    fn rate_limits_count_bytes_and_frames() {
        let budget = Arc::new(PartialBudget::new(0));
        let now = Instant::now();
        let mut i = Inbound::new(limits(None, Some(10)), budget.clone(), now);
        let f = frame(true, 9, 0); // pings count
        for _ in 0..10 {
            i.consumed(&mut f.to_vec(), now);
        }
        assert!(!i.rate_limited());
        i.consumed(&mut f.to_vec(), now);
        assert!(i.rate_limited());
        assert_eq!(i.may_read(), Err(Stop::RateLimited));
        // Discarded bytes count against the byte rate and release what a message held.
        let budget = Arc::new(PartialBudget::new(0));
        let mut i = Inbound::new(limits(Some(1 << 20), None), budget.clone(), now);
        i.consumed(&mut frame(false, 2, 100_000)[..20], now);
        assert_eq!(budget.reserved(), 200_000);
        i.discarded((1 << 20) - 100, now);
        assert_eq!(budget.reserved(), 0);
        assert!(!i.rate_limited());
        i.discarded(1 << 20, now);
        assert!(i.rate_limited());
        // Bytes: the burst holds at least one maxPayload message.
        let mut i = Inbound::new(limits(Some(1000), None), budget, now);
        i.consumed(&mut frame(true, 2, 1 << 20), now);
        assert!(!i.rate_limited());
        i.consumed(&mut frame(true, 2, 100), now);
        assert!(i.rate_limited());
    }

    #[test]
    fn partial_budget_reserves_at_the_header_and_releases_at_the_end() {
        let budget = Arc::new(PartialBudget::new(3000));
        let now = Instant::now();
        let mut a = Inbound::new(limits(None, None), budget.clone(), now);
        let mut b = Inbound::new(limits(None, None), budget.clone(), now);
        // Small messages reserve nothing.
        a.consumed(&mut frame(true, 2, 500), now);
        assert_eq!(budget.reserved(), 0);
        // A 2000-byte frame: reserved from its header on.
        let big = frame(true, 2, 2000);
        a.consumed(&mut big[..8].to_vec(), now);
        assert_eq!(budget.reserved(), 2000);
        // b's 2000 bytes do not fit: b stops before reading further.
        b.consumed(&mut big[..8].to_vec(), now);
        assert_eq!(budget.reserved(), 2000);
        assert_eq!(b.may_read(), Err(Stop::Room));
        // a completes: its reservation goes, and b's fits.
        a.consumed(&mut big[8..].to_vec(), now);
        assert_eq!(budget.reserved(), 0);
        assert_eq!(b.may_read(), Ok(()));
        assert_eq!(budget.reserved(), 2000);
        // Fragments add up; the end of the message releases them.
        drop(b);
        assert_eq!(budget.reserved(), 0);
        let mut c = Inbound::new(limits(None, None), budget.clone(), now);
        c.consumed(&mut frame(false, 2, 1000), now);
        assert_eq!(budget.reserved(), 2000); // the fragment and the read buffer it grew
        c.consumed(&mut frame(false, 0, 1000), now);
        assert_eq!(budget.reserved(), 3000);
        c.consumed(&mut frame(true, 9, 4), now); // a ping between fragments changes nothing
        assert_eq!(budget.reserved(), 3000);
        // The last fragment is larger: 5000 does not fit, but the message completes in this very
        // read, and then holds nothing.
        c.consumed(&mut frame(true, 0, 1500), now);
        assert_eq!(budget.reserved(), 0);
        assert_eq!(c.may_read(), Ok(()));
        // A fragmented message of maxPayload reserves twice that (fragments + read buffer); a
        // message alone proceeds even past the bound.
        let budget2 = Arc::new(PartialBudget::new(1 << 20));
        let mut e = Inbound::new(limits(None, None), budget2.clone(), now);
        e.consumed(&mut frame(false, 2, (1 << 20) - 1), now);
        assert_eq!(budget2.reserved(), (2 << 20) - 2);
        e.begin_wake();
        assert_eq!(e.may_read(), Ok(()));
        drop(e);
        assert_eq!(budget2.reserved(), 0);
        // A message over maxPayload is tungstenite's to refuse: nothing reserved.
        let mut over = vec![0x82, 0x80 | 127];
        over.extend_from_slice(&((1u64 << 20) + 1).to_be_bytes());
        over.extend_from_slice(&[0; 4]);
        let mut d = Inbound::new(limits(None, None), budget.clone(), now);
        d.consumed(&mut over.to_vec(), now);
        assert_eq!(budget.reserved(), 0);
    }

    #[test]
    fn the_frame_tracker_is_kept_only_while_a_message_is_under_way() {
        let budget = Arc::new(PartialBudget::new(0));
        let now = Instant::now();
        let mut i = Inbound::new(limits(None, None), budget, now);
        assert!(i.tracker.is_none());
        let f = frame(true, 2, 10);
        i.consumed(&mut f[..5].to_vec(), now);
        // A frame half read: not at rest, the tracker stays.
        assert!(!i.rest(0));
        assert!(i.tracker.is_some());
        i.consumed(&mut f[5..].to_vec(), now);
        // Complete, but not yet returned by tungstenite.
        assert!(!i.rest(0));
        assert!(i.tracker.is_some());
        assert!(i.rest(1));
        assert!(i.tracker.is_none());
        // The count goes on across trackers: two more messages, the second in two reads.
        i.consumed(&mut frame(true, 9, 0), now);
        i.consumed(&mut f[..3].to_vec(), now);
        assert!(!i.rest(2));
        i.consumed(&mut f[3..].to_vec(), now);
        assert!(!i.rest(2));
        assert!(i.rest(3));
        assert!(i.tracker.is_none());
        // Nothing read: nothing made.
        i.consumed(&mut [], now);
        assert!(i.tracker.is_none());
        assert!(i.rest(3));
    }

    #[test]
    fn large_frames_are_reported_once_at_rest() {
        let budget = Arc::new(PartialBudget::new(0));
        let now = Instant::now();
        let mut i = Inbound::new(limits(None, None), budget, now);
        let f = frame(true, 2, LARGE_FRAME as usize);
        i.consumed(&mut frame(true, 9, 0), now);
        i.consumed(&mut f[..100].to_vec(), now);
        assert!(!i.take_large_seen(1));
        i.consumed(&mut f[100..].to_vec(), now);
        // Not before tungstenite has returned both messages.
        assert!(!i.take_large_seen(1));
        assert!(i.take_large_seen(2));
        assert!(!i.take_large_seen(2));
    }
}
