//! Pings and pongs over a real socket: the server's heartbeat (`pingInterval`, `pongTimeout`),
//! the pong it owes for each ping of the client's, and the cap on pongs queued for a client that
//! does not read them (`MAX_QUEUED_PONGS`: beyond it the newest queued pong takes the latest
//! ping's payload, RFC 6455 §5.5.3).

use std::time::{Duration, Instant};

use crate::core::config::Config;
use crate::core::outbox::MAX_QUEUED_PONGS;
use crate::net::connection::interest;
use crate::net::testkit::{
    assert_fired, binary, config, deliver, fill_kernel, numbered, op, text, with_limits,
    ClientOptions, Harness, Seen,
};

fn with_pings(interval_ms: u64, timeout_ms: u64) -> Config {
    Config {
        ping_interval: Some(Duration::from_millis(interval_ms)),
        pong_timeout: Duration::from_millis(timeout_ms),
        ..config()
    }
}

#[test]
fn a_peer_that_answers_pings_stays_past_many_intervals() {
    let h = Harness::start(with_pings(100, 400));
    h.run(async {
        let (mut client, conn) = h.connect().await;
        conn.set_interest(interest::MESSAGE | interest::PONG);
        let until = Instant::now() + Duration::from_millis(900);
        let mut pings = 0;
        while Instant::now() < until {
            match client.next_within(Duration::from_millis(50)).await {
                Ok(Some(f)) => {
                    assert_eq!(f.opcode, op::PING, "{f:?}");
                    assert!(f.payload.is_empty());
                    pings += 1;
                    client.send(op::PONG, &f.payload).await;
                }
                Ok(None) => {}
                Err(end) => panic!("ended ({end:?}) although it answered every ping"),
            }
        }
        assert!(pings >= 3, "{pings} pings in 900 ms at a 100 ms interval");
        let pongs = h
            .events_of(conn.id)
            .iter()
            .filter(|e| matches!(e, Seen::Pong { .. }))
            .count();
        assert!(pongs >= pings - 1, "{pongs} pong events for {pings} pongs");
        assert!(conn.is_open());
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn a_peer_that_never_answers_is_terminated_after_pong_timeout() {
    let h = Harness::start(with_pings(150, 150));
    h.run(async {
        let start = Instant::now();
        let (mut client, conn) = h.connect().await;
        let (mut healthy, hconn) = h.connect().await;
        let id = conn.id;
        drop(conn);
        let healthy_task = async {
            // Answers every ping until the zombie is gone.
            loop {
                match healthy.next_within(Duration::from_millis(20)).await {
                    Ok(Some(f)) if f.opcode == op::PING => healthy.send(op::PONG, b"").await,
                    Ok(Some(f)) => panic!("unexpected {f:?}"),
                    Ok(None) => {
                        if h.events()
                            .iter()
                            .any(|e| e.id() == Some(id) && matches!(e, Seen::Close { .. }))
                        {
                            return;
                        }
                    }
                    Err(end) => panic!("the healthy client ended ({end:?})"),
                }
            }
        };
        let zombie = async {
            let (frames, _) = client.until_end().await;
            (frames, start.elapsed())
        };
        let ((frames, gone_after), ()) = tokio::join!(zombie, healthy_task);
        assert!(!frames.is_empty(), "it was pinged");
        assert!(
            frames.iter().all(|f| f.opcode == op::PING),
            "no close frame: {frames:?}"
        );
        // First ping after 150 ms, its deadline 150 ms later: timers fire late, never early.
        assert_fired(gone_after, Duration::from_millis(300));
        assert_eq!(h.wait_close(id).await, (1006, String::new()));
        assert_eq!(h.terminated(), vec![("pongTimeout", 1)]);
        assert!(hconn.is_open());
    });
}

#[test]
fn a_client_still_reading_its_backlog_outlives_pong_timeout_then_is_terminated_once_it_stops() {
    const SIZE: usize = 4000;
    let h = Harness::start(Config {
        ping_interval: Some(Duration::from_millis(300)),
        pong_timeout: Duration::from_millis(200),
        ..with_limits(8 << 20, 8 << 20, 0)
    });
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        // 600 KB queued at once, read at 8 KiB per 50 ms: about 4 s of reading, during which
        // every pong waits behind data in the kernel for longer than pongTimeout.
        let mut sent = 0;
        for _ in 0..150 {
            deliver(&conn, binary(&numbered(sent, SIZE)));
            sent += 1;
        }
        let (mut data, mut pings) = (0u64, 0);
        let start = Instant::now();
        while data < sent {
            match client.read_some(8 * 1024, Duration::from_millis(50)).await {
                Ok(frames) => {
                    for f in frames {
                        if f.opcode == op::PING {
                            pings += 1;
                            client.send(op::PONG, &f.payload).await;
                        } else {
                            data += 1;
                        }
                    }
                }
                Err(end) => panic!("ended ({end:?}) after {data} of {sent} while reading"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            start.elapsed() > Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
        assert!(pings >= 2, "{pings}");
        assert!(conn.is_open());
        assert_eq!(h.terminated(), vec![]);
        // Now it stops reading and answering: terminated.
        let id = conn.id;
        drop(conn);
        assert_eq!(h.wait_close(id).await.0, 1006);
        assert_eq!(h.terminated(), vec![("pongTimeout", 1)]);
    });
}

#[test]
fn a_ping_from_the_client_gets_a_pong_with_its_payload() {
    let h = Harness::start(config());
    h.run(async {
        let (mut client, conn) = h.connect().await;
        client.send(op::PING, b"hello").await;
        let f = client.next().await;
        assert_eq!((f.opcode, f.payload.as_slice()), (op::PONG, &b"hello"[..]));
        assert!(
            !h.events().iter().any(|e| matches!(e, Seen::Ping { .. })),
            "no ping event without a listener"
        );
        conn.set_interest(interest::MESSAGE | interest::PING);
        client.send(op::PING, b"again").await;
        let f = client.next().await;
        assert_eq!((f.opcode, f.payload.as_slice()), (op::PONG, &b"again"[..]));
        let ping = Seen::Ping {
            id: conn.id,
            data: b"again".to_vec(),
        };
        h.wait_seen("the ping event", |e| *e == ping).await;
        // The server's own ping and unsolicited pong.
        assert!(conn.send_control(false, b"srv"));
        assert!(conn.send_control(true, b"beat"));
        let (a, b) = (client.next().await, client.next().await);
        assert_eq!((a.opcode, a.payload.as_slice()), (op::PING, &b"srv"[..]));
        assert_eq!((b.opcode, b.payload.as_slice()), (op::PONG, &b"beat"[..]));
        assert!(conn.close_ordered(1000, ""));
        assert!(!conn.send_control(false, b"late"), "no ping once closing");
    });
}

#[test]
fn pongs_for_a_client_that_does_not_read_are_capped_and_go_ahead_of_queued_data() {
    const SIZE: usize = 4000;
    const PINGS: usize = 40;
    let h = Harness::start(with_limits(8 << 20, 8 << 20, 0));
    h.run(async {
        let (mut client, conn) = h.connect_with(ClientOptions::stalling()).await;
        conn.set_interest(interest::MESSAGE | interest::PING);
        let prefill = fill_kernel(&conn, SIZE, 0).await;
        let before = conn.buffered_amount();
        for i in 0..PINGS {
            client.send(op::PING, format!("p{i:02}").as_bytes()).await;
        }
        h.wait_for("every ping read", |log| {
            (log.iter()
                .filter(|e| matches!(e, Seen::Ping { .. }))
                .count()
                == PINGS)
                .then_some(())
        })
        .await;
        // Each kept pong is 2 + 3 bytes; the rest only replaced the newest one's payload.
        assert_eq!(conn.buffered_amount(), before + MAX_QUEUED_PONGS * 5);
        // Data queued after the pings waits behind the pongs.
        for i in 0..5 {
            assert!(conn.send_ordered(
                text(&format!("after {i}")),
                crate::core::policy::Priority::Normal
            ));
        }
        let mut frames = Vec::new();
        while frames.len() < prefill as usize + MAX_QUEUED_PONGS + 5 {
            frames.push(client.next().await);
        }
        let pongs: Vec<String> = frames
            .iter()
            .filter(|f| f.opcode == op::PONG)
            .map(|f| f.text())
            .collect();
        let mut want: Vec<String> = (0..MAX_QUEUED_PONGS - 1)
            .map(|i| format!("p{i:02}"))
            .collect();
        want.push(format!("p{:02}", PINGS - 1));
        assert_eq!(pongs, want);
        let first_after = frames
            .iter()
            .position(|f| f.opcode == op::TEXT)
            .expect("the later data");
        let last_pong = frames.iter().rposition(|f| f.opcode == op::PONG).unwrap();
        assert!(last_pong < first_after);
        let afters: Vec<String> = frames[first_after..].iter().map(|f| f.text()).collect();
        assert_eq!(
            afters,
            (0..5).map(|i| format!("after {i}")).collect::<Vec<_>>()
        );
        client.expect_nothing(Duration::from_millis(100)).await;
        assert!(conn.is_open());
    });
}
