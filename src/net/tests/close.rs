//! Every way a connection ends, seen from both sides: the close frame on the wire (code and
//! reason), how the server's side of the stream ends, the `close` event's code and reason, and
//! which `terminated` counter (if any) counts it.
//!
//! | path | on the wire | `close` event | counted |
//! |---|---|---|---|
//! | `conn.close(code, reason)`, peer answers | our close, then FIN after the peer's | ours | nothing |
//! | `conn.close()` without a code (1005) | an empty close frame | the peer's (1005 if empty too) | nothing |
//! | peer's close first | replies to earlier messages, the echo of its close, FIN | the peer's | nothing |
//! | both close at once | one close frame (ours) | the peer's | nothing |
//! | server close | queued data, 1001, FIN | the peer's echo (1001) | nothing |
//! | server close, peer silent | 1001, then reset at the close timeout | 1001 | `requested` |
//! | protocol error / bad close code | 1002 at once, FIN at once | 1002 | `protocol` / nothing |
//! | invalid UTF-8 | 1007 | 1007 | `protocol` |
//! | inbound rate | 1008 | 1008 | `rateLimited` |
//! | message too big | 1009 | 1009 | `protocol` |
//! | no room under `maxPartialMessageBytes` for 5 s | 1013 | 1013 | `partialBudget` |
//! | EOF or reset without a close frame | nothing | 1006 | `io` |
//! | our close unanswered | our close, then FIN at `closeTimeout` | ours | `closeTimeout` |
//! | `terminate()` | nothing | 1006 | `requested` |

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::metrics::Termination;
use crate::net::testkit::{
    assert_fired, client_frame, config, deliver, op, text, ClientOptions, End, Harness, Seen, WAIT,
};

/// An application that answers every text message `m` with `re:m`.
fn echo(h: &Harness) {
    h.on_event(|seen, conn| {
        if let (Seen::Message { data, .. }, Some(c)) = (seen, conn) {
            let reply = format!("re:{}", String::from_utf8_lossy(data));
            c.send_ordered(text(&reply), crate::core::policy::Priority::Normal);
        }
    });
}

fn texts(frames: &[crate::net::testkit::Got]) -> Vec<String> {
    frames.iter().map(|f| f.text()).collect()
}

#[test]
fn app_close_reaches_the_client_and_ends_after_its_answer() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        assert!(conn.close_ordered(4000, "bye"));
        assert!(!conn.is_open(), "closing at once");
        assert!(!conn.send_ordered(text("after close"), crate::core::policy::Priority::Normal));
        assert!(
            !conn.close_ordered(4001, "again"),
            "a second close is refused"
        );
        let (before, close) = client.until_close().await;
        assert!(before.is_empty());
        assert_eq!(close, (4000, "bye".to_string()));
        client.send_close(4000, "bye").await;
        // The server half-closes once both close frames are through.
        let (after, end) = client.until_end().await;
        assert!(after.is_empty());
        assert_eq!(end, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await, (4000, "bye".to_string()));
        assert_eq!(h.terminated(), vec![]);
        let m = &h.server.metrics;
        assert_eq!(m.connections_closed.load(Ordering::Relaxed), 1);
        assert_eq!(m.open.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn close_without_a_code_sends_an_empty_close_frame() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        // 1005 ("no status") is never sent as a code: the frame has no body, as ws's close().
        assert!(conn.close_ordered(1005, "ignored"));
        let f = client.next().await;
        assert_eq!((f.opcode, f.payload.len(), f.wire_len), (op::CLOSE, 0, 2));
        client
            .write(&client_frame(true, op::CLOSE, b"", true))
            .await;
        assert_eq!(client.until_end().await.1, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await, (1005, String::new()));
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn peer_close_first_is_announced_after_its_messages_and_answered_after_their_replies() {
    let h = Harness::start(config());
    echo(&h);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let mut burst = client_frame(true, op::TEXT, b"a", true);
        burst.extend(client_frame(true, op::TEXT, b"b", true));
        burst.extend(crate::net::testkit::client_close(4100, "client leaves"));
        client.write(&burst).await;
        let (replies, close) = client.until_close().await;
        assert_eq!(texts(&replies), ["re:a", "re:b"]);
        assert_eq!(close, (4100, "client leaves".to_string()));
        let (_, end) = client.until_end().await;
        assert_eq!(end, End::Fin);
        drop(client);
        assert_eq!(
            h.wait_close(conn.id).await,
            (4100, "client leaves".to_string())
        );
        let id = conn.id;
        assert_eq!(
            h.events_of(id),
            [
                Seen::Connection(id),
                Seen::Message {
                    id,
                    data: b"a".to_vec(),
                    binary: false
                },
                Seen::Message {
                    id,
                    data: b"b".to_vec(),
                    binary: false
                },
                Seen::PeerClose(id),
                Seen::Close {
                    id,
                    code: 4100,
                    reason: "client leaves".into()
                },
            ]
        );
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn the_answer_to_a_peer_close_waits_for_the_js_thread() {
    let h = Harness::start(config());
    h.set_auto_answer(false);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let mut burst = client_frame(true, op::TEXT, b"a", true);
        burst.extend(crate::net::testkit::client_close(4000, ""));
        client.write(&burst).await;
        h.wait_seen("the peer's close", |e| *e == Seen::PeerClose(conn.id))
            .await;
        // Until JavaScript has handled what came before the close, the connection is open and
        // what it sends goes out.
        assert!(conn.is_open());
        assert!(conn.send_ordered(text("late reply"), crate::core::policy::Priority::Normal));
        assert_eq!(client.next().await.text(), "late reply");
        client.expect_nothing(Duration::from_millis(200)).await;
        conn.answer_peer_close_ordered();
        let (rest, close) = client.until_close().await;
        assert!(rest.is_empty());
        assert_eq!(close, (4000, String::new()));
        assert_eq!(client.until_end().await.1, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await, (4000, String::new()));
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn an_unanswered_peer_close_ends_at_the_close_timeout() {
    let h = Harness::start(crate::core::config::Config {
        close_timeout: Duration::from_millis(300),
        ..config()
    });
    h.set_auto_answer(false);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let start = Instant::now();
        client.send_close(4002, "never answered").await;
        let (frames, _) = client.until_end().await;
        let elapsed = start.elapsed();
        assert!(frames.is_empty(), "no reply went out: {frames:?}");
        assert_fired(elapsed, Duration::from_millis(300));
        assert_eq!(
            h.wait_close(conn.id).await,
            (4002, "never answered".to_string())
        );
        assert_eq!(h.terminated(), vec![("closeTimeout", 1)]);
    });
}

#[test]
fn without_listeners_the_peer_close_is_answered_at_once() {
    let h = Harness::start(config());
    h.set_auto_answer(false);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        conn.set_interest(0);
        client.send_text("ignored").await;
        client.send_close(1001, "").await;
        let (rest, close) = client.until_close().await;
        assert!(rest.is_empty());
        assert_eq!(close, (1001, String::new()));
        assert_eq!(client.until_end().await.1, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await, (1001, String::new()));
        assert_eq!(h.terminated(), vec![]);
        assert!(!h.events().contains(&Seen::PeerClose(conn.id)));
        assert!(
            !h.events_of(conn.id)
                .iter()
                .any(|e| matches!(e, Seen::Message { .. })),
            "no message event without a listener"
        );
        assert_eq!(
            h.server.metrics.messages_received.load(Ordering::Relaxed),
            1,
            "counted all the same"
        );
    });
}

#[test]
fn a_peer_that_sends_fin_after_its_close_gets_the_replies_and_ends_without_a_timeout() {
    let h = Harness::start(crate::core::config::Config {
        close_timeout: Duration::from_secs(20),
        ..config()
    });
    echo(&h);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let start = Instant::now();
        let mut burst = client_frame(true, op::TEXT, b"last", true);
        burst.extend(crate::net::testkit::client_close(1000, ""));
        client.write(&burst).await;
        client.shutdown_write().await;
        let (replies, close) = client.until_close().await;
        assert_eq!(texts(&replies), ["re:last"]);
        assert_eq!(close, (1000, String::new()));
        assert_eq!(client.until_end().await.1, End::Fin);
        assert_eq!(h.wait_close(conn.id).await, (1000, String::new()));
        // Well before closeTimeout (20 s): the connection ended on the peer's FIN.
        assert!(start.elapsed() < WAIT, "{:?}", start.elapsed());
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn closes_that_cross_send_one_close_frame_and_report_the_peers() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        assert!(conn.close_ordered(4000, "srv"));
        // The client has not read the server's close when it sends its own.
        client.send_close(4001, "cli").await;
        let (frames, end) = client.until_end().await;
        let closes: Vec<_> = frames.iter().filter_map(|f| f.close()).collect();
        assert_eq!(closes, [(4000, "srv".to_string())], "{frames:?}");
        assert_eq!(frames.len(), 1);
        assert_eq!(end, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await, (4001, "cli".to_string()));
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn server_close_sends_1001_after_queued_data_then_closed() {
    let h = Harness::start(config());
    h.run(async {
        let (mut a, ca) = h.connect().await;
        let (mut b, cb) = h.connect().await;
        assert!(ca.send_ordered(text("queued"), crate::core::policy::Priority::Normal));
        assert!(h.server.begin_close(Duration::from_secs(5)));
        assert!(!h.server.begin_close(Duration::from_secs(5)), "only once");
        let (before, close) = a.until_close().await;
        assert_eq!(texts(&before), ["queued"]);
        assert_eq!(close, (1001, "server closing".to_string()));
        let (before, close) = b.until_close().await;
        assert!(before.is_empty());
        assert_eq!(close, (1001, "server closing".to_string()));
        for c in [&mut a, &mut b] {
            c.send_close(1001, "").await;
            assert_eq!(c.until_end().await.1, End::Fin);
        }
        drop((a, b));
        assert_eq!(h.wait_close(ca.id).await, (1001, String::new()));
        assert_eq!(h.wait_close(cb.id).await, (1001, String::new()));
        h.wait_seen("closed", |e| *e == Seen::Closed).await;
        assert_eq!(h.events().last(), Some(&Seen::Closed), "after every close");
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn server_close_terminates_a_silent_peer_at_its_timeout() {
    let h = Harness::start(crate::core::config::Config {
        close_timeout: Duration::from_secs(20),
        ..config()
    });
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let id = conn.id;
        drop(conn);
        let start = Instant::now();
        assert!(h.server.begin_close(Duration::from_millis(300)));
        let (_, close) = client.until_close().await;
        assert_eq!(close, (1001, "server closing".to_string()));
        // Never answered: terminated at the server's close timeout, not the connection's 20 s.
        let (rest, _) = client.until_end().await;
        assert!(rest.is_empty());
        let elapsed = start.elapsed();
        assert_fired(elapsed, Duration::from_millis(300));
        assert_eq!(h.wait_close(id).await, (1001, "server closing".to_string()));
        h.wait_seen("closed", |e| *e == Seen::Closed).await;
        assert_eq!(h.terminated(), vec![("requested", 1)]);
    });
}

#[test]
fn a_protocol_error_closes_with_1002_and_half_closes_at_once() {
    let h = Harness::start(crate::core::config::Config {
        close_timeout: Duration::from_secs(2),
        ..config()
    });
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let (mut other, _) = h.connect().await;
        let start = Instant::now();
        // Unmasked: a client frame must be masked.
        client
            .write(&client_frame(true, op::TEXT, b"x", false))
            .await;
        let (before, (code, _)) = client.until_close().await;
        assert!(before.is_empty());
        assert_eq!(code, 1002);
        // FIN right after the close frame, without waiting for ours (we keep our side open).
        let (rest, end) = client.until_end_within(Duration::from_millis(1500)).await;
        assert!(rest.is_empty());
        assert_eq!(end, End::Fin);
        assert!(start.elapsed() < Duration::from_millis(1500));
        // The peer keeps its side open: the server drops it by closeTimeout.
        assert_eq!(h.wait_close(conn.id).await.0, 1002);
        assert_eq!(h.terminated(), vec![("protocol", 1)]);
        // Another connection is untouched.
        other.send_text("ping?").await;
        h.wait_message(None, |d| d == b"ping?").await;
    });
}

#[test]
fn a_reserved_close_code_from_the_peer_is_answered_with_1002() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        client
            .write(&client_frame(true, op::CLOSE, &1005u16.to_be_bytes(), true))
            .await;
        let (_, (code, _)) = client.until_close().await;
        assert_eq!(code, 1002);
        assert_eq!(client.until_end().await.1, End::Fin);
        drop(client);
        assert_eq!(h.wait_close(conn.id).await.0, 1002);
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        client.send(op::TEXT, &[b'o', b'k', 0xff, 0xfe]).await;
        let (before, close) = client.until_close().await;
        assert!(before.is_empty());
        assert_eq!(close, (1007, "invalid UTF-8".to_string()));
        client.send_close(1007, "").await;
        assert_eq!(h.wait_close(conn.id).await.0, 1007);
        assert_eq!(h.terminated(), vec![("protocol", 1)]);
    });
}

#[test]
fn a_message_over_max_payload_closes_with_1009_and_exactly_max_payload_passes() {
    let max = 1000;
    let mut cfg = config();
    cfg.max_payload = max;
    cfg.inbound.max_payload = max;
    let h = Harness::start(cfg);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        client.send(op::BINARY, &vec![7u8; max]).await;
        h.wait_message(Some(conn.id), |d| d.len() == max).await;
        client.send(op::BINARY, &vec![7u8; max + 1]).await;
        let (_, close) = client.until_close().await;
        assert_eq!(close, (1009, "message too big".to_string()));
        assert_eq!(h.wait_close(conn.id).await.0, 1009);

        // Fragmented: the total counts.
        let (mut client, conn) = h.connect().await;
        let mut two = client_frame(false, op::BINARY, &vec![1u8; 600], true);
        two.extend(client_frame(true, op::CONTINUATION, &vec![2u8; 600], true));
        client.write(&two).await;
        let (_, close) = client.until_close().await;
        assert_eq!(close.0, 1009);
        assert_eq!(h.wait_close(conn.id).await.0, 1009);
        assert_eq!(h.terminated(), vec![("protocol", 2)]);
    });
}

#[test]
fn a_client_over_the_inbound_frame_rate_is_closed_with_1008() {
    let mut cfg = config();
    // A bucket of 20 frames, refilled at 20 per second.
    cfg.inbound.frames_per_second = Some(20);
    cfg.inbound.window = Duration::from_secs(1);
    let h = Harness::start(cfg);
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let (mut other, _) = h.connect().await;
        let flood: Vec<u8> = (0..100)
            .flat_map(|_| client_frame(true, op::BINARY, b"", true))
            .collect();
        client.write(&flood).await;
        let (_, close) = client.until_close().await;
        assert_eq!(close, (1008, "inbound rate limit exceeded".to_string()));
        let (rest, _) = client.until_end().await;
        assert!(rest.is_empty());
        assert_eq!(h.wait_close(conn.id).await.0, 1008);
        assert_eq!(h.terminated(), vec![("rateLimited", 1)]);
        let delivered = h
            .events_of(conn.id)
            .iter()
            .filter(|e| matches!(e, Seen::Message { .. }))
            .count();
        assert!(
            delivered <= 21,
            "{delivered} messages passed a bucket of 20"
        );
        // The limit is per connection.
        other.send_text("fine").await;
        h.wait_message(None, |d| d == b"fine").await;
    });
}

#[test]
fn a_message_that_finds_no_room_under_max_partial_message_bytes_is_closed_with_1013() {
    let mut cfg = config();
    cfg.max_partial_message_bytes = 4096;
    cfg.close_timeout = Duration::from_secs(1);
    let h = Harness::start(cfg);
    h.run(async {
        let size = 100_000;
        let whole = client_frame(true, op::BINARY, &vec![9u8; size], true);
        let (cut, _) = whole.split_at(200);
        // A holds the budget with a message it has only begun.
        let (mut a, ca) = h.connect().await;
        a.write(cut).await;
        let deadline = Instant::now() + WAIT;
        while h.server.partial.reserved() == 0 {
            assert!(Instant::now() < deadline, "A's message was never reserved");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // B's message does not fit beside it: B waits, then is told to come back later.
        let (mut b, cb) = h.connect().await;
        let start = Instant::now();
        b.write(cut).await;
        let (_, close) = b.until_close().await;
        let waited = start.elapsed();
        assert_eq!(close, (1013, "no room for the message".to_string()));
        assert_fired(waited, crate::net::inbound::PARTIAL_ROOM_TIMEOUT);
        drop(b);
        assert_eq!(h.wait_close(cb.id).await.0, 1013);
        assert!(
            h.server
                .metrics
                .inbound_partial_pauses
                .load(Ordering::Relaxed)
                >= 1
        );
        // A was never held up: its message completes.
        a.write(&whole[200..]).await;
        h.wait_message(Some(ca.id), |d| d.len() == size).await;
        assert!(ca.is_open());
        assert_eq!(h.terminated(), vec![("partialBudget", 1)]);
    });
}

#[test]
fn eof_or_reset_without_a_close_frame_is_1006() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        client.shutdown_write().await;
        assert_eq!(h.wait_close(conn.id).await, (1006, String::new()));
        let (frames, end) = client.until_end().await;
        assert!(frames.is_empty(), "no close frame: {frames:?}");
        assert_eq!(end, End::Fin);

        let (client, conn) = h.connect().await;
        client.reset();
        assert_eq!(h.wait_close(conn.id).await, (1006, String::new()));
        assert_eq!(h.terminated(), vec![("io", 2)]);
    });
}

/// A panic in a connection's task (a bug) ends that connection as a broken one and nothing
/// else: it leaves the registry (no later broadcast counts it), the client's socket is closed,
/// `'close'` says 1006, `io` counts it, and the server goes on serving the others.
#[test]
fn a_panic_in_a_connection_ends_it_and_leaves_the_server_serving() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let (mut other, _) = h.connect().await;
        crate::net::connection::tests::PANIC_IN_WRITER
            .store(Arc::as_ptr(&conn) as usize, Ordering::Relaxed);
        // Queued without writing inline: the writer is woken, and panics.
        deliver(&conn, text("boom"));
        assert_eq!(h.wait_close(conn.id).await, (1006, String::new()));
        // The socket is closed (FIN or reset: nobody wrote a close frame).
        let (frames, _) = client.until_end().await;
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(h.terminated(), vec![("io", 1)]);
        let mut left = Vec::new();
        h.server.snapshot_all(&mut left);
        assert_eq!(left.len(), 1, "only the other connection is registered");
        assert_eq!(h.server.metrics.open.load(Ordering::Relaxed), 1);
        deliver(&left[0], text("still here"));
        assert_eq!(other.next().await.text(), "still here");
    });
}

#[test]
fn an_unanswered_close_ends_at_the_close_timeout_with_our_code() {
    let h = Harness::start(crate::core::config::Config {
        close_timeout: Duration::from_millis(300),
        ..config()
    });
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let start = Instant::now();
        assert!(conn.close_ordered(1000, "please answer"));
        let (_, close) = client.until_close().await;
        assert_eq!(close, (1000, "please answer".to_string()));
        // The client keeps reading and never answers.
        let (rest, _) = client.until_end().await;
        assert!(rest.is_empty());
        let elapsed = start.elapsed();
        assert_fired(elapsed, Duration::from_millis(300));
        assert_eq!(
            h.wait_close(conn.id).await,
            (1000, "please answer".to_string())
        );
        assert_eq!(h.terminated(), vec![("closeTimeout", 1)]);
    });
}

#[test]
fn terminate_drops_the_connection_without_a_close_frame() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        let (mut other, oconn) = h.connect().await;
        let id = conn.id;
        conn.end(Some(Termination::Requested));
        assert!(!conn.is_open());
        assert!(!conn.send_ordered(text("too late"), crate::core::policy::Priority::Normal));
        drop(conn);
        let (frames, _) = client.until_end().await;
        assert!(frames.is_empty(), "no close frame: {frames:?}");
        assert_eq!(h.wait_close(id).await, (1006, String::new()));
        assert_eq!(h.terminated(), vec![("requested", 1)]);
        assert!(oconn.send_ordered(text("still fine"), crate::core::policy::Priority::Normal));
        assert_eq!(other.next().await.text(), "still fine");
    });
}

#[test]
fn stalled_clients_get_the_close_code_only_if_it_went_out() {
    // A connection that ends before its close frame is in the kernel reports 1006, whatever
    // was queued: here the queue holds data ahead of the close, and terminate() cuts it.
    let h = Harness::start(config());
    h.run(async {
        let (_client, conn) = h.connect_with(ClientOptions::stalling()).await;
        crate::net::testkit::fill_kernel(&conn, 4000, 0).await;
        assert!(conn.close_ordered(4000, "after the data"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.end(Some(Termination::Requested));
        assert_eq!(h.wait_close(conn.id).await, (1006, String::new()));
    });
}
