//! Memory per idle connection, on the Rust side: every heap allocation a connection keeps while it
//! sits idle, by exact size, counted while a window is open by the test build's global allocator
//! (`fuzz::CountingAlloc`, see `fuzz::by_size`).
//!
//! `idle_connection_heap` opens [`CONNS`] connections from plain blocking sockets (which allocate
//! nothing), waits for them to settle (reader parked on readability, writer on its wake-up), and
//! reports what the server side allocated per connection and still holds. It fails if that is
//! above [`HEAP_BOUND`], so that a change that adds per-connection memory is seen. Run it alone to
//! see the breakdown: `cargo test --release idle_connection_heap -- --nocapture`. Other tests
//! running at the same time allocate and free in the window too, which moves its figure (either
//! way): the bound is checked against the smallest of up to three windows, and the breakdown is
//! exact only when the test runs alone.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::config::Config;
use crate::fuzz::by_size::{COUNT, EXACT, LARGE_BYTES, ON};
use crate::net::testkit::{config, Harness};

/// One window at a time (the counters are global).
static WINDOW: Mutex<()> = Mutex::new(());

/// Connections measured (after [`WARM`] that are not).
const CONNS: usize = 1000;
const WARM: usize = 100;
/// What an idle connection may keep on the Rust heap, in bytes, malloc's own overhead included
/// (16-byte chunks with an 8-byte header on glibc): 1.87 KB measured, with room for the other
/// tests of a full run, and below what a 1 KiB read buffer kept at rest would add.
const HEAP_BOUND: f64 = 2200.0;

/// What glibc's malloc takes for an allocation of `n` bytes: the size and an 8-byte header,
/// rounded up to 16, at least 32.
fn chunk(n: usize) -> usize {
    (n + 8).div_ceil(16).max(2) * 16
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a connection and reads its 101, without allocating.
fn open(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(REQUEST).expect("upgrade request");
    let mut buf = [0u8; 512];
    let mut have = 0;
    while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf[have..]).expect("read the 101");
        assert!(n > 0, "closed before the 101");
        have += n;
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    s
}

/// Waits (without allocating) until `n` connections are open, then lets their tasks settle.
fn settle(h: &Harness, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.server.metrics.open.load(Ordering::Acquire) < n {
        assert!(Instant::now() < deadline, "connections did not all open");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// Opens a counting window: the counters start from zero and count from now.
fn start_counting() {
    for c in COUNT.iter() {
        c.store(0, Ordering::Relaxed);
    }
    LARGE_BYTES.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::SeqCst);
}

/// Closes the window and returns what it counted per connection, over [`CONNS`] connections:
/// (net bytes with malloc's overhead, the allocations by size held by at least a quarter of the
/// connections, large bytes).
fn stop_counting() -> (f64, Vec<(usize, f64)>, f64) {
    ON.store(false, Ordering::SeqCst);
    let n = CONNS as f64;
    let mut total = 0f64;
    let mut rows = Vec::new();
    for (size, c) in COUNT.iter().enumerate().take(EXACT) {
        let count = c.load(Ordering::Relaxed);
        if count != 0 {
            total += (count * chunk(size) as i64) as f64;
        }
        if count.unsigned_abs() as usize >= CONNS / 4 {
            rows.push((size, count as f64 / n));
        }
    }
    let large = LARGE_BYTES.load(Ordering::Relaxed) as f64;
    total += large;
    (total / n, rows, large / n)
}

/// Per-connection heap of one window in which [`CONNS`] connections open and settle.
fn window(h: &Harness, clients: &mut Vec<std::net::TcpStream>) -> (f64, Vec<(usize, f64)>, f64) {
    let before = clients.len();
    start_counting();
    for _ in 0..CONNS {
        clients.push(open(h.addr));
    }
    settle(h, before + CONNS);
    stop_counting()
}

fn idle_config() -> Config {
    Config {
        // The default heartbeat, as in production: its timer lives in the reader's future.
        ping_interval: Config::default().ping_interval,
        ..config()
    }
}

#[test]
fn idle_connection_heap() {
    let _one = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start(idle_config());
    let mut clients = Vec::with_capacity(WARM + 3 * CONNS);
    for _ in 0..WARM {
        clients.push(open(h.addr));
    }
    settle(&h, WARM);
    {
        let mut all = Vec::new();
        h.server.snapshot_all(&mut all);
        let conn = all.pop().expect("a connection");
        println!("| part | bytes |\n|---|---|");
        for (name, size) in crate::net::connection::part_sizes(&conn) {
            println!("| {name} | {size} |");
        }
        println!(
            "| the connection's task future (run_connection) | {} |",
            h.server.connection_future_size(conn.clone())
        );
    }
    let mut best = f64::MAX;
    for run in 0..3 {
        let (per_conn, rows, large) = window(&h, &mut clients);
        println!("window {run}: {per_conn:.0} B per idle connection on the Rust heap (malloc chunks), {large:.0} B of it in allocations of {EXACT} B or more");
        println!(
            "| allocation size | per connection | chunk bytes per connection |\n|---|---|---|"
        );
        for (size, count) in rows {
            println!(
                "| {size} | {count:.2} | {:.0} |",
                count * chunk(size) as f64
            );
        }
        best = best.min(per_conn);
        if best <= HEAP_BOUND {
            break;
        }
    }
    assert!(
        best <= HEAP_BOUND,
        "an idle connection keeps {best:.0} B on the Rust heap, over the {HEAP_BOUND} B bound"
    );
}

/// What a connection keeps once the broadcasts it was sent are written and read: nothing more
/// than before them. A client that keeps up with sparse broadcasts (each read before the next,
/// as in the lobby) empties its outbox at every one, so storage kept there (or in the writer's
/// batch) after the frame goes out would be held by every connection of a busy server, at rest
/// between broadcasts. (After a burst, several frames taken at once, it is kept until a lone
/// frame empties the outbox again: see `Outbox::take_batch`.) [`WARM`] connections get a
/// broadcast first, outside the window, so that what the server allocates once (the fan-out's
/// histograms, its snapshot) is not counted; then [`CONNS`] more open, and the window holds
/// their first broadcasts.
#[test]
fn a_connection_keeps_no_storage_once_its_broadcasts_are_written() {
    use crate::core::policy::Priority;
    use crate::net::fanout::{Stamp, Target};
    use crate::wire::frame::OpCode;
    let _one = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let h = Harness::start(idle_config());
    let payload = vec![7u8; 2048];
    let wire = 2048 + 4;
    let broadcast_and_read = |clients: &mut Vec<std::net::TcpStream>, rounds: usize| {
        for _ in 0..rounds {
            let (admitted, _) = h.server.fanout().broadcast(
                &h.server,
                &payload,
                OpCode::Binary,
                Priority::Normal,
                Target::All,
                Stamp::default(),
            );
            assert!(admitted.ok(), "broadcast refused");
        }
        let mut buf = vec![0u8; wire * rounds];
        for c in clients.iter_mut() {
            c.read_exact(&mut buf)
                .expect("the client reads its broadcasts");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut clients = Vec::with_capacity(WARM + 3 * CONNS);
    for _ in 0..WARM {
        clients.push(open(h.addr));
    }
    settle(&h, WARM);
    broadcast_and_read(&mut clients, 2);
    let mut best = f64::MAX;
    for run in 0..3 {
        let before = clients.len();
        for _ in 0..CONNS {
            clients.push(open(h.addr));
        }
        settle(&h, before + CONNS);
        start_counting();
        for _ in 0..3 {
            broadcast_and_read(&mut clients, 1);
        }
        let (per_conn, rows, _) = stop_counting();
        println!("window {run}: | allocation size | net count per new connection |");
        for (size, count) in rows {
            println!("| {size} | {count:.2} |");
        }
        println!("window {run}: {per_conn:.0} B per connection kept after its first broadcasts");
        best = best.min(per_conn);
        if best <= 64.0 {
            break;
        }
    }
    assert!(
        best <= 64.0,
        "a connection keeps {best:.0} B more once its broadcasts are written than before them"
    );
}
