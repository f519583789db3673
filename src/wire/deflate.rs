//! permessage-deflate (RFC 7692): the negotiation, and each message compressed or inflated on its
//! own. Bytes and header values only: no I/O, no server state.
//!
//! **Negotiation** ([`negotiate`]). The client's `Sec-WebSocket-Extensions` offers are read in
//! order, and the first `permessage-deflate` offer the server can accept is accepted; the others
//! (and every other extension) are declined by leaving them out of the 101. An offer is declined,
//! never refused with an error, when a parameter is unknown or repeated, when a window size is not
//! 8 to 15 written without a leading zero, when `*_no_context_takeover` carries a value, or when
//! `clientMaxWindowBits` asks for a window below 15 and the client did not offer
//! `client_max_window_bits` (§7.1.2.2: the server may then not ask for one). The answer holds only
//! what the RFC allows for what was offered:
//!
//! | offered | answered |
//! |---|---|
//! | anything | `server_no_context_takeover`: sluice compresses every message alone (§7.1.1.1 lets the server say so unasked) |
//! | `server_max_window_bits=N` | `server_max_window_bits=min(N, serverMaxWindowBits)` |
//! | `client_max_window_bits[=N]` | `client_max_window_bits=min(N or 15, clientMaxWindowBits)` |
//! | `client_no_context_takeover`, or the option | `client_no_context_takeover` |
//!
//! **Compression** ([`compress`]). Raw deflate, flushed with a sync flush whose trailing
//! `00 00 ff ff` is removed (§7.2.1), from a fresh state every time: the same compressed frame is
//! valid for every client whatever it received before, so a broadcast is compressed once. A
//! message is sent compressed to a client only if its window admits the compressor's: a message
//! no longer than `2^bits` cannot refer further back than the client's window, whatever the
//! compressor's window (zlib's smallest is 9 bits, so a client asking for 8 gets only those).
//!
//! **Inflation** ([`Inflater`]). The tail is appended (§7.2.2) and the output grown in steps up to
//! the limit plus one byte: a message that would inflate past the limit stops there
//! ([`InflateError::TooBig`], close 1009), whatever its compressed size, so a compression bomb
//! costs at most the limit in memory. With client context takeover, a connection keeps its
//! inflate state (47,552 bytes with zlib-rs, measured, whatever the window) from its first
//! compressed message on; without (the default), a per-thread state is reset for each message
//! and a connection holds none.

use std::cell::RefCell;

use crate::wire::handshake::split_outside_quotes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const NAME: &str = "permessage-deflate";

/// What a sync flush ends with, removed by the sender and put back by the receiver (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib's smallest window: a window of 8 bits is run as 9.
const MIN_ZLIB_BITS: u8 = 9;

/// The `perMessageDeflate` option, with its defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeflateConfig {
    /// Payloads below this many bytes are sent uncompressed.
    pub(crate) threshold: usize,
    /// zlib level, 0 to 9.
    pub(crate) level: u32,
    /// The largest `server_max_window_bits` answered, 8 to 15; the compressor's window
    /// ([`compressor_bits`]: 8 runs as 9).
    pub(crate) server_max_window_bits: u8,
    /// The largest window the client may compress with, 8 to 15 (15: whatever it offers).
    pub(crate) client_max_window_bits: u8,
    /// Ask the client to compress every message alone (no inflate state kept per connection).
    pub(crate) client_no_context_takeover: bool,
}

/// Defaults, with their reasons (also in the README).
impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            // ws's: below about 1 KiB, JSON saves a few hundred bytes at most, and a frame that
            // small costs the kernel about as much to send either way.
            threshold: 1024,
            // Measured with zlib-rs on ~2 KiB lobby JSON that changes every tick (the commit that
            // added flate2): level 1 compresses it 2.00 times in 18 µs (p50), level 6 2.72 times
            // in 47 µs, level 9 2.77 times in 61 µs. Paid once per broadcast, level 6's 36% fewer
            // bytes to every client are worth 29 µs; level 9 adds 2% for 30% more time.
            level: 6,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            // A connection whose client keeps its context holds an inflate state of its own:
            // 47,552 bytes with zlib-rs, whatever the window (it allocates the whole 32 KiB
            // window), so `client_max_window_bits` does not shrink it. 10,000 clients would hold
            // 475 MB. Asked to compress each message alone, they share one state per thread; in
            // a lobby, clients send little, and rarely above the threshold.
            client_no_context_takeover: true,
        }
    }
}

/// What one connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The largest window the client inflates with (`server_max_window_bits`, else 15).
    pub(crate) server_bits: u8,
    /// The window the client compresses with (`client_max_window_bits`, else 15).
    pub(crate) client_bits: u8,
    /// The client compresses every message alone.
    pub(crate) client_no_context: bool,
    /// The `client_max_window_bits` answered, if it was offered.
    answered_client_bits: Option<u8>,
    /// The `server_max_window_bits` answered, if it was offered.
    answered_server_bits: Option<u8>,
}

impl Negotiated {
    /// The value of the 101's `Sec-WebSocket-Extensions` header.
    pub(crate) fn response(&self) -> String {
        let mut s = format!("{NAME}; server_no_context_takeover");
        if self.client_no_context {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(b) = self.answered_server_bits {
            s.push_str(&format!("; server_max_window_bits={b}"));
        }
        if let Some(b) = self.answered_client_bits {
            s.push_str(&format!("; client_max_window_bits={b}"));
        }
        s
    }

    /// Whether a message of `len` bytes compressed with a `bits` window may go to this client.
    pub(crate) fn accepts(&self, len: usize, bits: u8) -> bool {
        bits <= self.server_bits || len <= 1usize << self.server_bits
    }
}

/// A parameter's value: a token, or a quoted string holding one (RFC 6455 §9.1).
fn param_value(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let v = match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped {
                    out.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => raw.to_string(),
    };
    crate::wire::handshake::is_token(&v).then_some(v)
}

/// A window size as §7.1.2 writes it: 8 to 15, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The parameters of one `permessage-deflate` offer, if the server can accept it.
#[derive(Default)]
struct Offer {
    client_no_context: bool,
    server_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_bits: Option<Option<u8>>,
}

fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen: Vec<String> = Vec::new();
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(param_value(v)?)),
            None => (p.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            // Always answered: sluice keeps no compression context.
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => o.client_no_context = true,
            ("server_max_window_bits", Some(v)) => o.server_bits = Some(window_bits(&v)?),
            ("client_max_window_bits", None) => o.client_bits = Some(None),
            ("client_max_window_bits", Some(v)) => o.client_bits = Some(Some(window_bits(&v)?)),
            _ => return None,
        }
        seen.push(name);
    }
    Some(o)
}

/// The first acceptable `permessage-deflate` offer in the request's `Sec-WebSocket-Extensions`
/// headers, accepted under `cfg`; `None`: none is (the connection goes on uncompressed).
pub(crate) fn negotiate(headers: &[(String, String)], cfg: &DeflateConfig) -> Option<Negotiated> {
    let offers = headers
        .iter()
        .filter(|(n, _)| n == "sec-websocket-extensions")
        .flat_map(|(_, v)| split_outside_quotes(v, b','));
    for offer in offers {
        let mut parts = split_outside_quotes(offer, b';');
        let name = parts.next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case(NAME) {
            continue;
        }
        let Some(o) = parse_offer(parts) else {
            continue;
        };
        if cfg.client_max_window_bits < 15 && o.client_bits.is_none() {
            // We could not ask for the smaller window the option wants (§7.1.2.2).
            continue;
        }
        let answered_server_bits = o.server_bits.map(|b| b.min(cfg.server_max_window_bits));
        let answered_client_bits = o
            .client_bits
            .map(|b| b.unwrap_or(15).min(cfg.client_max_window_bits));
        return Some(Negotiated {
            server_bits: answered_server_bits.unwrap_or(15),
            client_bits: answered_client_bits.unwrap_or(15),
            client_no_context: o.client_no_context || cfg.client_no_context_takeover,
            answered_client_bits,
            answered_server_bits,
        });
    }
    None
}

/// The compressor's window for a configured `serverMaxWindowBits`.
pub(crate) fn compressor_bits(cfg: &DeflateConfig) -> u8 {
    cfg.server_max_window_bits.max(MIN_ZLIB_BITS)
}

thread_local! {
    /// One compressor per thread, per (level, window): reset before every message.
    static COMPRESSOR: RefCell<Option<(u32, u8, Compress)>> = const { RefCell::new(None) };
    /// Output scratch for the compressor, kept between messages (bounded below).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Inflate state for connections whose client compresses every message alone.
    static INFLATER: RefCell<Option<(u8, Decompress)>> = const { RefCell::new(None) };
}

/// Scratch kept between messages, at most: a larger message's buffer is freed after it.
const SCRATCH_KEEP: usize = 256 * 1024;

/// Compresses `payload` alone (raw deflate, sync flush, tail removed) and hands the result to
/// `f`. Data that does not compress comes out a few bytes longer (zlib falls back to stored
/// blocks: 5 bytes per 64 KiB, and the flush); it is sent compressed all the same, as `ws` and
/// uWebSockets.js do, and as some clients expect of a connection that negotiated the extension
/// (kosoku 0.1.0, running Autobahn's cases, fails an uncompressed reply). `None`: zlib failed.
pub(crate) fn compress<R>(
    payload: &[u8],
    cfg: &DeflateConfig,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    let bits = compressor_bits(cfg);
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((l, b, c)) if *l == cfg.level && *b == bits => c.reset(),
            _ => {
                *slot = Some((
                    cfg.level,
                    bits,
                    Compress::new_with_window_bits(Compression::new(cfg.level), false, bits),
                ))
            }
        }
        let (_, _, c) = slot.as_mut().expect("just set");
        SCRATCH.with(|s| {
            let mut out = s.borrow_mut();
            out.clear();
            out.reserve(payload.len() / 2 + 64);
            let start = c.total_in();
            loop {
                let done = (c.total_in() - start) as usize;
                // A sync flush has written everything once input is used up and room is left.
                if c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
                    .is_err()
                {
                    return None;
                }
                let done = (c.total_in() - start) as usize;
                if done == payload.len() && out.len() < out.capacity() {
                    break;
                }
                let more = out.capacity().max(64);
                out.reserve(more);
            }
            let r = if out.ends_with(&TAIL) {
                Some(f(&out[..out.len() - TAIL.len()]))
            } else {
                None
            };
            if out.capacity() > SCRATCH_KEEP {
                *out = Vec::new();
            }
            r
        })
    })
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates past the limit (close 1009).
    TooBig,
    /// Not valid deflate data, or it refers to data it does not have (close 1007).
    Corrupt,
}

/// One connection's inflate side.
pub(crate) struct Inflater {
    /// The client's window.
    bits: u8,
    /// The client keeps its context: so do we, here. `None` without context takeover (the
    /// thread's state is used) or before the first compressed message.
    own: Option<Box<Decompress>>,
    no_context: bool,
}

/// Output grows by at most this much at a time, so that memory follows what was really inflated.
const INFLATE_STEP: usize = 64 * 1024;

impl Inflater {
    pub(crate) fn new(n: &Negotiated) -> Self {
        Self {
            bits: n.client_bits.max(MIN_ZLIB_BITS),
            own: None,
            no_context: n.client_no_context,
        }
    }

    /// Inflates one message (its frames' payloads joined), at most `limit` bytes of output.
    pub(crate) fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        if self.no_context {
            let bits = self.bits;
            INFLATER.with(|cell| {
                let mut slot = cell.borrow_mut();
                match slot.as_mut() {
                    Some((b, d)) if *b == bits => d.reset(false),
                    _ => *slot = Some((bits, Decompress::new_with_window_bits(false, bits))),
                }
                let (_, d) = slot.as_mut().expect("just set");
                run(d, data, limit)
            })
        } else {
            let bits = self.bits;
            let d = self
                .own
                .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
            let r = run(d, data, limit);
            if r.is_err() {
                // The connection is failed; its state is of no further use.
                self.own = None;
            }
            r
        }
    }

    #[cfg(test)]
    /// This connection holds an inflate state of its own (context takeover, after a compressed
    /// message); without context takeover it never does.
    pub(crate) fn held(&self) -> bool {
        self.own.is_some()
    }
}

/// Inflates `data` and the tail into a new buffer of at most `limit` bytes.
fn run(d: &mut Decompress, data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> =
        Vec::with_capacity((data.len() * 4).clamp(64, INFLATE_STEP).min(limit + 1));
    for mut input in [data, &TAIL[..]] {
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                let step = out.len().clamp(64, INFLATE_STEP).min(limit + 1 - out.len());
                out.reserve_exact(step);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            input = &input[(d.total_in() - in0) as usize..];
            if status == Status::StreamEnd {
                // A final block (BFINAL): the message ends here; what follows it is ignored, and
                // the next message starts from a fresh state.
                d.reset(false);
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                return Ok(out);
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if d.total_in() == in0 && out.len() == out0 {
                // Neither input used nor output made, with room for output: stuck.
                return Err(InflateError::Corrupt);
            }
        }
    }
    if out.len() > limit {
        return Err(InflateError::TooBig);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(v: &str) -> Vec<(String, String)> {
        vec![("sec-websocket-extensions".to_string(), v.to_string())]
    }

    /// The defaults, but clients may keep their context (ws's default).
    fn takeover() -> DeflateConfig {
        DeflateConfig {
            client_no_context_takeover: false,
            ..DeflateConfig::default()
        }
    }

    fn answer(v: &str, cfg: &DeflateConfig) -> Option<String> {
        negotiate(&ext(v), cfg).map(|n| n.response())
    }

    #[test]
    fn offers_are_answered_as_rfc_7692_says() {
        // The default asks every client to compress each message alone (§7.1.1.2 allows it
        // unasked).
        assert_eq!(
            answer("permessage-deflate", &DeflateConfig::default()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        let d = takeover();
        assert_eq!(
            answer("permessage-deflate", &d).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        // A browser's offer: client_max_window_bits without a value.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits", &d).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
        );
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
                &d
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
        );
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits=\"9\"", &d).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=9")
        );
        for declined in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(answer(declined, &d), None, "{declined}");
        }
        // Several offers: the first acceptable one.
        let n = negotiate(
            &ext("permessage-deflate; bogus, permessage-deflate; client_max_window_bits=12, permessage-deflate"),
            &d,
        )
        .unwrap();
        assert_eq!(n.client_bits, 12);
        // Across several headers too, and a comma inside quotes separates nothing.
        let h = vec![
            (
                "sec-websocket-extensions".to_string(),
                "foo; x=\"a,b\"".to_string(),
            ),
            (
                "sec-websocket-extensions".to_string(),
                "permessage-deflate".to_string(),
            ),
        ];
        assert!(negotiate(&h, &d).is_some());
    }

    #[test]
    fn options_bound_what_is_answered() {
        let cfg = DeflateConfig {
            server_max_window_bits: 11,
            client_max_window_bits: 10,
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        // The client did not offer client_max_window_bits: the server cannot ask for 10.
        assert_eq!(answer("permessage-deflate", &cfg), None);
        let n = negotiate(
            &ext("permessage-deflate; client_max_window_bits; server_max_window_bits=13"),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            n.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11; client_max_window_bits=10"
        );
        assert_eq!(
            (n.server_bits, n.client_bits, n.client_no_context),
            (11, 10, true)
        );
    }

    #[test]
    fn a_window_admits_a_compressor_or_a_short_message() {
        let n = negotiate(
            &ext("permessage-deflate; server_max_window_bits=8"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert!(n.accepts(256, 15));
        assert!(!n.accepts(257, 15));
        assert!(!n.accepts(300, 9));
        assert!(n.accepts(1 << 20, 8));
    }

    fn lobby(i: usize) -> Vec<u8> {
        let mut s = String::from("{\"tables\":[");
        for t in 0..24 {
            s.push_str(&format!(
                "{{\"id\":{t},\"game\":\"roulette\",\"seats\":[{},{},{}],\"jackpot\":{}}},",
                (t * 7 + i) % 9,
                (t * 3 + i) % 9,
                (t + i) % 9,
                100_000 + t * 131 + i
            ));
        }
        s.push_str("{}]}");
        s.into_bytes()
    }

    #[test]
    fn a_message_round_trips_and_compresses() {
        let cfg = takeover();
        let n = negotiate(&ext("permessage-deflate"), &cfg).unwrap();
        let mut inf = Inflater::new(&n);
        for i in 0..20 {
            let msg = lobby(i);
            let z = compress(&msg, &cfg, |z| z.to_vec()).expect("JSON compresses");
            assert!(z.len() * 2 < msg.len(), "{} of {}", z.len(), msg.len());
            assert_eq!(inf.inflate(&z, 1 << 20).unwrap(), msg);
        }
        assert!(inf.held(), "context takeover keeps the state");
        // Incompressible data comes out a few bytes longer, and still inflates.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let z = compress(&noise, &cfg, |z| z.to_vec()).unwrap();
        assert!(
            z.len() >= noise.len() && z.len() <= noise.len() + 16,
            "{}",
            z.len()
        );
        assert_eq!(inf.inflate(&z, 1 << 20).unwrap(), noise);
        let z = compress(b"", &cfg, |z| z.to_vec()).unwrap();
        assert_eq!(inf.inflate(&z, 1 << 20).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let cfg = DeflateConfig::default();
        let zeros = vec![0u8; 8 << 20];
        let z = compress(&zeros, &cfg, |z| z.to_vec()).unwrap();
        assert!(z.len() < 16 << 10);
        let n = negotiate(&ext("permessage-deflate; client_no_context_takeover"), &cfg).unwrap();
        let mut inf = Inflater::new(&n);
        assert_eq!(inf.inflate(&z, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(inf.inflate(&z, 8 << 20).map(|v| v.len()), Ok(8 << 20));
        assert!(!inf.held(), "without context takeover nothing is kept");
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff, 0x00], 1 << 20),
            Err(InflateError::Corrupt)
        );
        // An exact fit passes.
        let msg = lobby(3);
        let z = compress(&msg, &cfg, |z| z.to_vec()).unwrap();
        assert_eq!(inf.inflate(&z, msg.len()).unwrap(), msg);
        assert_eq!(inf.inflate(&z, msg.len() - 1), Err(InflateError::TooBig));
    }

    #[test]
    fn context_takeover_carries_the_window() {
        // The client's second message refers to its first: only a kept state can inflate it.
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut msgs = Vec::new();
        for m in [lobby(1), lobby(1)] {
            let mut out = Vec::with_capacity(8192);
            c.compress_vec(&m, &mut out, FlushCompress::Sync).unwrap();
            out.truncate(out.len() - 4);
            msgs.push((m, out));
        }
        assert!(msgs[1].1.len() < msgs[0].1.len() / 4);
        let n = negotiate(&ext("permessage-deflate"), &takeover()).unwrap();
        let mut inf = Inflater::new(&n);
        for (m, z) in &msgs {
            assert_eq!(&inf.inflate(z, 1 << 20).unwrap(), m);
        }
    }
}
