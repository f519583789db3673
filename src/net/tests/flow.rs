//! Flow control over a real socket: a client that stops reading (a 4 KiB receive buffer) stalls
//! the writer, so that what is queued stays queued and every byte can be accounted for.
//!
//! * `backpressure` fires once when `bufferedAmount` rises above `highWaterMark`, with the amount
//!   of the push that crossed it; `drain` once when it falls below `lowWaterMark`, and they
//!   alternate.
//! * `bufferedAmount` grows by exactly the encoded frame of each send; the close frame is not
//!   counted in it; what the client reads is exactly `bytesSent` and `framesSent`.
//! * When a connection ends with data queued, every frame accepted is either written whole or
//!   counted as dropped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::core::metrics::Termination;
use crate::core::outbox::Outcome;
use crate::core::policy::Priority;
use crate::net::testkit::{
    binary, check_numbered, deliver, fill_kernel, frame_len, numbered, op, settle, text,
    with_limits, ClientOptions, Harness, Seen,
};

const KIB: usize = 1024;

fn crossings(h: &Harness, id: u64) -> Vec<Seen> {
    h.events_of(id)
        .into_iter()
        .filter(|e| matches!(e, Seen::Backpressure { .. } | Seen::Drain { .. }))
        .collect()
}

#[test]
fn backpressure_and_drain_fire_once_per_crossing_with_their_amounts() {
    const SIZE: usize = 4000;
    const HIGH: usize = 64 * KIB;
    const LOW: usize = 16 * KIB;
    let frame = frame_len(SIZE);
    let h = Harness::start(with_limits(4096 * KIB, HIGH, LOW));
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        let id = conn.id;
        let m = &h.server.metrics;
        let mut seq = 0u64;
        let mut read = 0u64;
        for cycle in 0..2 {
            seq += fill_kernel(&conn, SIZE, seq).await;
            assert!(conn.buffered_amount() < HIGH);
            assert_eq!(crossings(&h, id).len(), 2 * cycle);

            // Cross the high-water mark one message at a time: each adds exactly its frame.
            let mut crossed_at = 0;
            while conn.buffered_amount() <= HIGH {
                let before = conn.buffered_amount();
                deliver(&conn, binary(&numbered(seq, SIZE)));
                seq += 1;
                crossed_at = conn.buffered_amount();
                assert_eq!(crossed_at - before, frame, "one send, one frame");
            }
            assert!(crossed_at > HIGH && crossed_at <= HIGH + frame);
            let amount = h
                .wait_for("backpressure", |_| match crossings(&h, id).get(2 * cycle) {
                    Some(Seen::Backpressure { amount, .. }) => Some(*amount),
                    Some(other) => panic!("expected backpressure, got {other:?}"),
                    None => None,
                })
                .await;
            assert_eq!(amount, crossed_at, "the amount of the push that crossed");
            assert_eq!(m.backpressured.load(Ordering::Relaxed), 1);

            // Above the mark: no more events.
            for _ in 0..40 {
                deliver(&conn, binary(&numbered(seq, SIZE)));
                seq += 1;
            }
            assert!(conn.buffered_amount() > HIGH + 40 * frame);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(crossings(&h, id).len(), 2 * cycle + 1);

            // The client reads everything, in order and intact.
            while read < seq {
                let f = client.next().await;
                assert_eq!(f.opcode, op::BINARY);
                assert_eq!(check_numbered(&f.payload), read);
                read += 1;
            }
            let amount = h
                .wait_for("drain", |_| match crossings(&h, id).get(2 * cycle + 1) {
                    Some(Seen::Drain { amount, .. }) => Some(*amount),
                    Some(other) => panic!("expected drain, got {other:?}"),
                    None => None,
                })
                .await;
            assert!(amount < LOW, "drain at {amount}");
            assert_eq!(m.backpressured.load(Ordering::Relaxed), 0);
            settle(&conn).await;
            assert_eq!(conn.buffered_amount(), 0);
        }
        let kinds: Vec<&str> = crossings(&h, id)
            .iter()
            .map(|e| match e {
                Seen::Backpressure { .. } => "backpressure",
                _ => "drain",
            })
            .collect();
        assert_eq!(kinds, ["backpressure", "drain", "backpressure", "drain"]);
        assert_eq!(m.backpressure_events.load(Ordering::Relaxed), 2);
        assert_eq!(m.drain_events.load(Ordering::Relaxed), 2);
        assert!(conn.is_open());
    });
}

#[test]
fn every_byte_queued_is_counted_once_and_is_what_the_client_reads() {
    let h = Harness::start(with_limits(8192 * KIB, 8192 * KIB, 0));
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        let m = &h.server.metrics;

        // Inbound: messages and their payload bytes.
        for len in [0usize, 10, 300] {
            client.send(op::BINARY, &vec![1u8; len]).await;
        }
        h.wait_message(Some(conn.id), |d| d.len() == 300).await;
        assert_eq!(m.messages_received.load(Ordering::Relaxed), 3);
        assert_eq!(m.bytes_received.load(Ordering::Relaxed), 310);

        let prefill = fill_kernel(&conn, 4000, 0).await;
        let b0 = conn.buffered_data();
        assert!(b0 > 0);
        assert_eq!(conn.buffered_amount(), b0, "no close frame queued yet");

        // Each send adds exactly its encoded frame: 2, 4 or 10 header bytes and the payload.
        let cases: [(usize, Priority); 8] = [
            (0, Priority::Normal),
            (1, Priority::Normal),
            (125, Priority::Normal),
            (126, Priority::Normal),
            (1000, Priority::Low),
            (65535, Priority::Normal),
            (65536, Priority::Normal),
            (100_000, Priority::Critical),
        ];
        let mut expected = b0;
        for (len, priority) in cases {
            let before = conn.buffered_data();
            let outcome = conn.deliver(binary(&vec![0x5a; len]), priority);
            assert_eq!(outcome, Outcome::Queued);
            assert_eq!(conn.buffered_data() - before, frame_len(len), "{len} bytes");
            expected += frame_len(len);
        }
        // UTF-8: bytes, not characters.
        let before = conn.buffered_data();
        assert!(conn.send_ordered(text(&"é".repeat(100)), Priority::Normal));
        assert_eq!(conn.buffered_data() - before, frame_len(200));
        expected += frame_len(200);
        // A ping counts; the close frame does not count in bufferedAmount, only in what is queued.
        assert!(conn.send_control(false, b"abc"));
        expected += 5;
        assert_eq!(conn.buffered_data(), expected);
        assert!(conn.close_ordered(1000, "bye"));
        assert_eq!(conn.buffered_data(), expected);
        assert_eq!(conn.buffered_amount(), expected + 7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            conn.buffered_data(),
            expected,
            "nothing moves while stalled"
        );

        // The client reads it all.
        let (frames, close) = client.until_close().await;
        assert_eq!(close, (1000, "bye".to_string()));
        let data: Vec<usize> = frames
            .iter()
            .filter(|f| f.opcode != op::PING)
            .map(|f| f.payload.len())
            .collect();
        let mut want: Vec<usize> = cases.iter().map(|c| c.0).collect();
        want.extend([200]);
        want.extend(std::iter::repeat_n(4000, prefill as usize));
        let (mut got_sorted, mut want_sorted) = (data.clone(), want.clone());
        got_sorted.sort_unstable();
        want_sorted.sort_unstable();
        assert_eq!(got_sorted, want_sorted);
        let pings: Vec<_> = frames.iter().filter(|f| f.opcode == op::PING).collect();
        assert_eq!(pings.len(), 1);
        assert_eq!(pings[0].payload, b"abc");
        assert!(frames
            .iter()
            .all(|f| f.wire_len == frame_len(f.payload.len())));

        client.send_close(1000, "").await;
        client.until_end().await;
        assert_eq!(client.cut(), 0);
        let (read_bytes, read_frames) = (client.frame_bytes, client.frames);
        drop(client);
        h.wait_close(conn.id).await;

        let wanted_bytes = prefill * frame_len(4000) as u64 + (expected as u64 - b0 as u64) + 7;
        assert_eq!(read_bytes, wanted_bytes, "every byte queued was read once");
        assert_eq!(m.bytes_sent.load(Ordering::Relaxed), read_bytes);
        assert_eq!(read_frames, prefill + cases.len() as u64 + 1 + 1 + 1);
        assert_eq!(m.frames_sent.load(Ordering::Relaxed), read_frames);
        assert!(m.writes.load(Ordering::Relaxed) <= read_frames);
        assert_eq!(m.dropped_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(conn.buffered_amount(), 0);
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn frames_cut_by_terminate_are_counted_as_dropped() {
    const SIZE: usize = 4000;
    let h = Harness::start(with_limits(4096 * KIB, 4096 * KIB, 0));
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        let m = &h.server.metrics;
        let mut delivered = fill_kernel(&conn, SIZE, 0).await;
        // 800 KB more than a stalled client's kernel takes.
        for _ in 0..200 {
            deliver(&conn, binary(&numbered(delivered, SIZE)));
            delivered += 1;
        }
        settle(&conn).await;
        let id = conn.id;
        conn.end(Some(Termination::Requested));
        assert_eq!(conn.buffered_amount(), 0, "discarded at once");
        drop(conn);
        assert_eq!(h.wait_close(id).await.0, 1006);
        let dropped: u64 = m.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum();
        let written = m.frames_sent.load(Ordering::Relaxed);
        assert!(dropped >= 100, "{dropped}");
        assert_eq!(
            written + dropped,
            delivered,
            "each frame written whole or dropped"
        );
        // A frame cut halfway counts whole as dropped: the bytes add up to what was delivered
        // plus the part of that one frame that went out.
        let bytes = m.bytes_sent.load(Ordering::Relaxed) + m.dropped_bytes.load(Ordering::Relaxed);
        let delivered_bytes = delivered * frame_len(SIZE) as u64;
        assert!(
            bytes >= delivered_bytes && bytes < delivered_bytes + frame_len(SIZE) as u64,
            "{bytes} for {delivered_bytes}"
        );
        assert_eq!(m.backpressured.load(Ordering::Relaxed), 0);
        let _ = client.until_end().await;
        assert_eq!(h.terminated(), vec![("requested", 1)]);
    });
}

#[test]
fn overflow_past_max_buffered_amount_ends_the_connection() {
    const SIZE: usize = 4000;
    let h = Harness::start(with_limits(128 * KIB, 64 * KIB, 16 * KIB));
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        let m = &h.server.metrics;
        let mut seq = fill_kernel(&conn, SIZE, 0).await;
        let outcome = loop {
            assert!(seq < 10_000, "never overflowed");
            let o = conn.deliver(binary(&numbered(seq, SIZE)), Priority::Normal);
            seq += 1;
            if o != Outcome::Queued {
                break o;
            }
            assert!(conn.buffered_amount() <= 128 * KIB);
        };
        assert_eq!(outcome, Outcome::Overflow);
        assert!(!conn.is_open());
        assert_eq!(
            conn.deliver(binary(&numbered(seq, SIZE)), Priority::Normal),
            Outcome::Closed
        );
        let id = conn.id;
        drop(conn);
        // The close frame goes out only if the kernel takes it at once: 1008 if it did, else
        // 1006; the client never has to read its backlog for the server to be rid of it.
        let (code, _) = h.wait_close(id).await;
        assert!(code == 1008 || code == 1006, "{code}");
        assert!(h
            .events_of(id)
            .iter()
            .any(|e| matches!(e, Seen::Backpressure { .. })));
        assert_eq!(m.backpressured.load(Ordering::Relaxed), 0);
        assert!(m.dropped_bytes.load(Ordering::Relaxed) > 0);
        let _ = client.until_end().await;
        assert_eq!(h.terminated(), vec![("overflow", 1)]);
    });
}
