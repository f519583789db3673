//! Fan-out order: what JavaScript does to a connection takes effect in call order. A `send` or a
//! `close` made while broadcasts wait for the fan-out task goes down the same channel behind
//! them, and `server.close()` closes every connection after the broadcasts before it.
//!
//! The worker runtime has one thread here, held by [`Harness::block_workers`] while the calls are
//! made, so that the broadcasts are certainly still pending (the ordered path, not the direct
//! one) and the fan-out backlog can be checked byte for byte.

use std::time::{Duration, Instant};

use crate::core::config::Config;
use crate::core::policy::Priority;
use crate::net::fanout::{shard_count, Admitted, Except, Stamp, Target, JOB_OVERHEAD, SHARD_MIN};
use crate::net::testkit::{config, frame_len, text, Client, ClientOptions, Harness, Seen, WAIT};
use crate::wire::frame::OpCode;

fn one_worker() -> Config {
    Config {
        threads: 1,
        ..config()
    }
}

fn broadcast(h: &Harness, s: &str) -> Admitted {
    let (admitted, _) = h.server.fanout().broadcast(
        &h.server,
        s.as_bytes(),
        OpCode::Text,
        Priority::Normal,
        Target::All,
        Stamp::default(),
    );
    admitted
}

async fn until_idle(h: &Harness) {
    let deadline = Instant::now() + WAIT;
    while h.server.fanout().pending_jobs() > 0 {
        assert!(Instant::now() < deadline, "the fan-out never caught up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn send_and_close_behind_broadcasts_arrive_after_them_in_call_order() {
    const N: usize = 100;
    let h = Harness::start(one_worker());
    h.run(async {
        let (mut a, ca) = h.connect().await;
        let (mut b, _) = h.connect().await;
        let fanout = h.server.fanout();
        let blocked = h.block_workers();
        let mut backlog = 0;
        let mut above = 0;
        for i in 0..N {
            let msg = format!("b{i}");
            match broadcast(&h, &msg) {
                Admitted::Queued => {}
                Admitted::QueuedAboveMark => above += 1,
                Admitted::Refused => panic!("broadcast {i} refused"),
            }
            backlog += frame_len(msg.len()) + JOB_OVERHEAD;
            assert_eq!(
                fanout.pending_bytes(),
                backlog,
                "each job costs its frame + overhead"
            );
        }
        assert!(above > 0, "100 jobs pass the 16 KiB pendingHighWaterMark");
        assert!(fanout.busy());
        assert_eq!(fanout.pending_jobs(), N);
        assert!(ca.send_ordered(text("direct"), Priority::Normal));
        backlog += frame_len(6) + JOB_OVERHEAD;
        assert!(ca.close_ordered(4000, "after"));
        backlog += JOB_OVERHEAD;
        assert_eq!(fanout.pending_jobs(), N + 2);
        assert_eq!(fanout.pending_bytes(), backlog);
        // Nothing was queued to the connection yet: it is all still in the fan-out.
        assert_eq!(ca.buffered_amount(), 0);
        blocked.release();

        let (got, close) = a.until_close().await;
        let mut want: Vec<String> = (0..N).map(|i| format!("b{i}")).collect();
        want.push("direct".into());
        assert_eq!(got.iter().map(|f| f.text()).collect::<Vec<_>>(), want);
        assert_eq!(close, (4000, "after".to_string()));
        let mut got_b = Vec::new();
        while got_b.len() < N {
            got_b.push(b.next().await.text());
        }
        want.pop();
        assert_eq!(got_b, want);
        b.expect_nothing(Duration::from_millis(100)).await;

        until_idle(&h).await;
        assert_eq!(fanout.pending_bytes(), 0);
        // The broadcasts that returned "above the mark" get one server drain, once below it.
        let drains: Vec<Seen> = h
            .events()
            .into_iter()
            .filter(|e| matches!(e, Seen::FanoutDrain { .. }))
            .collect();
        assert_eq!(drains.len(), 1, "{drains:?}");
        assert!(matches!(drains[0], Seen::FanoutDrain { pending } if pending < 16 * 1024));
    });
}

#[test]
fn server_close_behind_broadcasts_delivers_them_before_1001() {
    const N: usize = 50;
    let h = Harness::start(one_worker());
    h.run(async {
        let (mut a, _) = h.connect().await;
        let (mut b, _) = h.connect().await;
        let blocked = h.block_workers();
        for i in 0..N {
            assert_ne!(broadcast(&h, &format!("m{i}")), Admitted::Refused);
        }
        assert!(h.server.begin_close(Duration::from_secs(5)));
        blocked.release();
        let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        for c in [&mut a, &mut b] {
            let (got, close) = c.until_close().await;
            assert_eq!(got.iter().map(|f| f.text()).collect::<Vec<_>>(), want);
            assert_eq!(close, (1001, "server closing".to_string()));
            c.send_close(1001, "").await;
        }
        drop((a, b));
        h.wait_for("closed", |log| log.contains(&Seen::Closed).then_some(()))
            .await;
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn sends_racing_the_fan_out_keep_call_order() {
    // No blocking here: each round's direct send finds the fan-out busy or idle, whichever it
    // is; the order must hold either way.
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 20;
    let h = Harness::start(config());
    h.run(async {
        let (mut a, ca) = h.connect().await;
        for r in 0..ROUNDS {
            for i in 0..PER_ROUND {
                assert_ne!(broadcast(&h, &format!("{r}.{i}")), Admitted::Refused);
            }
            assert!(ca.send_ordered(text(&format!("{r}.direct")), Priority::Normal));
            let mut got = Vec::new();
            while got.len() < PER_ROUND + 1 {
                got.push(a.next().await.text());
            }
            let mut want: Vec<String> = (0..PER_ROUND).map(|i| format!("{r}.{i}")).collect();
            want.push(format!("{r}.direct"));
            assert_eq!(got, want, "round {r}");
        }
        for i in 0..PER_ROUND {
            assert_ne!(broadcast(&h, &format!("last.{i}")), Admitted::Refused);
        }
        assert!(ca.close_ordered(1000, "done"));
        let (got, close) = a.until_close().await;
        assert_eq!(got.len(), PER_ROUND);
        assert_eq!(close, (1000, "done".to_string()));
    });
}

#[test]
fn a_broadcast_behind_a_close_is_not_sent_and_counted_as_dropped() {
    let h = Harness::start(one_worker());
    h.run(async {
        let (mut a, ca) = h.connect().await;
        let (mut b, _) = h.connect().await;
        let blocked = h.block_workers();
        assert_ne!(broadcast(&h, "before"), Admitted::Refused);
        assert!(ca.close_ordered(4000, "closing"));
        assert_ne!(broadcast(&h, "behind"), Admitted::Refused);
        blocked.release();
        let (got, close) = a.until_close().await;
        assert_eq!(got.iter().map(|f| f.text()).collect::<Vec<_>>(), ["before"]);
        assert_eq!(close, (4000, "closing".to_string()));
        assert_eq!(b.next().await.text(), "before");
        assert_eq!(b.next().await.text(), "behind");
        until_idle(&h).await;
        let m = &h.server.metrics;
        let dropped: Vec<u64> = m
            .dropped
            .iter()
            .map(|d| d.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(
            dropped,
            [0, 1, 0],
            "one Normal frame, for the closing connection"
        );
        assert_eq!(
            m.dropped_bytes.load(std::sync::atomic::Ordering::Relaxed),
            frame_len(6) as u64
        );
    });
}

#[test]
fn a_broadcast_shared_among_the_workers_keeps_each_connections_order() {
    // Enough connections for one shard per worker (two): each connection gets every broadcast,
    // in call order, with the direct sends and closes made between them in their places; a
    // connection excluded by `except` gets nothing of that broadcast, whichever shard it is in.
    const ROUNDS: usize = 40;
    let h = Harness::start(config());
    h.run(async {
        let mut clients = Vec::new();
        for _ in 0..3 * SHARD_MIN {
            clients.push(h.connect().await);
        }
        assert_eq!(shard_count(h.server.config.threads, clients.len()), 2);
        let skipped = clients[clients.len() - 1].1.id;
        for r in 0..ROUNDS {
            let stamp = Stamp {
                except: Except::from_ids(vec![skipped]),
                ..Stamp::default()
            };
            let (admitted, _) = h.server.fanout().broadcast(
                &h.server,
                format!("{r}").as_bytes(),
                OpCode::Text,
                Priority::Normal,
                Target::All,
                if r % 2 == 0 { stamp } else { Stamp::default() },
            );
            assert_ne!(admitted, Admitted::Refused);
            assert!(clients[r % clients.len()]
                .1
                .send_ordered(text(&format!("{r}.direct")), Priority::Normal));
        }
        assert!(clients[0].1.close_ordered(1000, "done"));
        for (i, (client, conn)) in clients.iter_mut().enumerate() {
            let mut want = Vec::new();
            for r in 0..ROUNDS {
                if !(conn.id == skipped && r % 2 == 0) {
                    want.push(format!("{r}"));
                }
                if r % (3 * SHARD_MIN) == i {
                    want.push(format!("{r}.direct"));
                }
            }
            let mut got = Vec::new();
            if i == 0 {
                let (frames, close) = client.until_close().await;
                got.extend(frames.iter().map(|f| f.text()));
                assert_eq!(close, (1000, "done".to_string()));
            } else {
                while got.len() < want.len() {
                    got.push(client.next().await.text());
                }
            }
            assert_eq!(got, want, "connection {i}");
        }
        until_idle(&h).await;
        assert_eq!(h.terminated(), vec![]);
    });
}

#[test]
fn a_new_client_gets_its_101_while_every_worker_is_busy() {
    // The accept thread registers the connection and writes its 101 itself: a fan-out (or
    // anything else) keeping the workers busy does not delay a new client's handshake. The
    // connection's tasks start once a worker is free, and then it works like any other.
    let h = Harness::start(one_worker());
    h.run(async {
        let blocked = h.block_workers();
        let t = Instant::now();
        let mut c = Client::connect(h.addr, ClientOptions::default()).await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "the 101 took {took:?} with the workers blocked"
        );
        blocked.release();
        assert_ne!(broadcast(&h, "after"), Admitted::Refused);
        assert_eq!(c.next().await.text(), "after");
    });
}
