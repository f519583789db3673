//! `wss://`: the same connection over rustls, with a client that trusts the test CA
//! ([`testkit::test_certs`]). What TLS changes is checked where it could break: bytes the kernel
//! did not take stay in rustls (the writer pushes them first, our close frame counts as written
//! only once its record is out), a stalled client, a plain-text client on the TLS port.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::outbox::Outcome;
use crate::core::policy::Priority;
use crate::net::testkit::{
    binary, frame_len, op, tls_config, with_limits, ClientOptions, End, Harness, WAIT,
};

const KIB: usize = 1024;

fn tls_client() -> ClientOptions {
    ClientOptions {
        tls: true,
        ..ClientOptions::default()
    }
}

#[test]
fn messages_and_a_large_broadcast_cross_tls_byte_for_byte() {
    let h = Harness::start(crate::core::config::Config {
        limits: with_limits(8192 * KIB, 8192 * KIB, 0).limits,
        ..tls_config()
    });
    h.run(async {
        let (mut client, conn) = h.connect_with(tls_client()).await;
        client.send_text("hello over tls").await;
        h.wait_message(Some(conn.id), |d| d == b"hello over tls")
            .await;
        // 1 MiB in one frame: dozens of TLS records, several writes.
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            conn.deliver(binary(&big), Priority::Normal),
            Outcome::Queued
        );
        for i in 0..100u8 {
            assert_eq!(
                conn.deliver(binary(&[i; 100]), Priority::Normal),
                Outcome::Queued
            );
        }
        let got = client.next().await;
        assert_eq!((got.opcode, got.payload.len()), (op::BINARY, big.len()));
        assert!(got.payload == big, "the payload arrives intact");
        for i in 0..100u8 {
            assert_eq!(client.next().await.payload, vec![i; 100], "in order");
        }
        let m = &h.server.metrics;
        assert_eq!(m.tls_handshakes.load(Ordering::Relaxed), 1);
        assert_eq!(m.tls_errors.load(Ordering::Relaxed), 0);
        assert_eq!(conn.buffered_amount(), 0);
    });
}

/// A client that stops reading: the kernel fills, records wait in rustls, frames in the outbox;
/// then our close. Once it reads again it gets every frame once, in order, then the close frame,
/// then the end of the stream; the bytes written are the bytes it read.
#[test]
fn a_stalled_tls_client_gets_every_frame_once_then_our_close() {
    let h = Harness::start(crate::core::config::Config {
        limits: with_limits(8192 * KIB, 8192 * KIB, 0).limits,
        ..tls_config()
    });
    h.run(async {
        let (mut client, conn) = h
            .connect_with(ClientOptions {
                tls: true,
                ..ClientOptions::stalling()
            })
            .await;
        const N: usize = 400;
        const SIZE: usize = 4000;
        for i in 0..N {
            let payload = vec![(i % 256) as u8; SIZE];
            assert_eq!(
                conn.deliver(binary(&payload), Priority::Normal),
                Outcome::Queued
            );
        }
        assert!(conn.close_ordered(1000, "bye"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stalled = conn.buffered_amount();
        assert!(
            stalled > 0,
            "a client that does not read holds the queue (1.6 MB queued)"
        );
        let (frames, close) = client.until_close().await;
        assert_eq!(close, (1000, "bye".to_string()));
        assert_eq!(frames.len(), N);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.payload, vec![(i % 256) as u8; SIZE], "frame {i}");
        }
        client.send_close(1000, "").await;
        assert_eq!(client.until_end().await.1, End::Fin);
        assert_eq!(client.cut(), 0);
        let read_bytes = client.frame_bytes;
        drop(client);
        h.wait_close(conn.id).await;
        let m = &h.server.metrics;
        let wanted = (N * frame_len(SIZE) + 7) as u64;
        assert_eq!(read_bytes, wanted, "every byte queued was read once");
        assert_eq!(m.bytes_sent.load(Ordering::Relaxed), wanted);
        assert_eq!(m.frames_sent.load(Ordering::Relaxed), N as u64 + 1);
        assert_eq!(m.dropped_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(conn.buffered_amount(), 0);
        assert_eq!(m.tls_errors.load(Ordering::Relaxed), 0);
        assert_eq!(h.terminated(), vec![]);
    });
}

/// Plain HTTP on the TLS port is no TLS hello: rustls refuses it, the socket is closed, the
/// failure counted, and nothing became a connection; a TLS client still connects after it.
#[test]
fn plain_text_on_the_tls_port_is_a_counted_tls_error() {
    let h = Harness::start(tls_config());
    h.run(async {
        let mut raw = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        raw.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server closes the socket");
        assert!(
            !String::from_utf8_lossy(&answer).contains("101"),
            "no upgrade over plain text"
        );
        let m = &h.server.metrics;
        assert_eq!(m.tls_errors.load(Ordering::Relaxed), 1);
        assert_eq!(m.connections_opened.load(Ordering::Relaxed), 0);
        let (mut client, conn) = h.connect_with(tls_client()).await;
        assert_eq!(
            conn.deliver(binary(b"still serving"), Priority::Normal),
            Outcome::Queued
        );
        assert_eq!(client.next().await.payload, b"still serving");
    });
}

/// An overflow (an urgent failure) of a stalled TLS client, with records left in rustls that the
/// kernel does not take: the connection ends at once, as a plain one does, not at closeTimeout.
#[test]
fn an_overflowing_stalled_tls_client_ends_at_once() {
    use crate::net::testkit::{fill_kernel, numbered};
    const SIZE: usize = 4000;
    let h = Harness::start(crate::core::config::Config {
        limits: with_limits(128 * KIB, 64 * KIB, 16 * KIB).limits,
        ..tls_config()
    });
    h.run(async {
        let (client, conn) = h
            .connect_with(ClientOptions {
                tls: true,
                ..ClientOptions::stalling()
            })
            .await;
        let mut seq = fill_kernel(&conn, SIZE, 0).await;
        let outcome = loop {
            assert!(seq < 10_000, "never overflowed");
            let o = conn.deliver(binary(&numbered(seq, SIZE)), Priority::Normal);
            seq += 1;
            if o != Outcome::Queued {
                break o;
            }
        };
        assert_eq!(outcome, Outcome::Overflow);
        let t = std::time::Instant::now();
        let id = conn.id;
        drop(conn);
        h.wait_close(id).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "ended after {:?} (closeTimeout {:?})",
            t.elapsed(),
            h.server.config.close_timeout
        );
        assert_eq!(h.terminated(), vec![("overflow", 1)]);
        drop(client);
    });
}

/// A ClientHello that comes in pieces, slowly, still completes (the accept thread waits for the
/// whole first record with `SO_RCVLOWAT` raised); one that announces more than 16 KiB is refused
/// at once, before rustls buffers any of it, and counted.
#[test]
fn a_hello_in_slow_pieces_completes_and_an_oversized_one_is_refused_at_once() {
    use std::io::{Read as _, Write as _};
    let h = Harness::start(tls_config());
    let addr = h.addr;
    h.run(async {
        let m = &h.server.metrics;
        // Announces a 60,000-byte ClientHello, then waits.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xea, 0x60])
            .await
            .unwrap();
        let t = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "refused after {:?}",
            t.elapsed()
        );
        assert_eq!(m.tls_errors.load(Ordering::Relaxed), 1);

        let upgraded = tokio::task::spawn_blocking(move || {
            let mut c = rustls::ClientConnection::new(
                crate::net::testkit::test_certs().client.clone(),
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            )
            .unwrap();
            let mut hello = Vec::new();
            c.write_tls(&mut hello).unwrap();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            for piece in [&hello[..3], &hello[3..12], &hello[12..hello.len() / 2]] {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            s.write_all(&hello[hello.len() / 2..]).unwrap();
            while c.is_handshaking() {
                c.complete_io(&mut s).unwrap();
            }
            let mut tls = rustls::Stream::new(&mut c, &mut s);
            tls.write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
            let mut head = [0u8; 12];
            tls.read_exact(&mut head).unwrap();
            head
        })
        .await
        .unwrap();
        assert_eq!(&upgraded, b"HTTP/1.1 101");
        assert_eq!(m.tls_handshakes.load(Ordering::Relaxed), 1);
        assert_eq!(m.tls_errors.load(Ordering::Relaxed), 1);
    });
}

/// The byte rate counts what a TLS client puts on the wire once: a 200 KiB message in 13
/// records fits a burst of one 256 KiB `maxPayload`, however the reads split the records'
/// plaintext (data decrypted in one read and handed over in the next is not counted twice).
#[test]
fn a_tls_message_is_charged_to_the_byte_rate_once() {
    let mut config = tls_config();
    config.max_payload = 256 * KIB;
    config.inbound = crate::core::config::RateLimits {
        bytes_per_second: Some(1024),
        frames_per_second: None,
        window: Duration::from_millis(1),
        max_payload: 256 * KIB,
    };
    let h = Harness::start(config);
    h.run(async {
        let (mut client, conn) = h.connect_with(tls_client()).await;
        let payload = vec![7u8; 200 * KIB];
        client.send(op::BINARY, &payload).await;
        h.wait_message(Some(conn.id), |d| d.len() == payload.len())
            .await;
        assert_eq!(h.terminated(), vec![], "not rate limited");
        assert!(conn.is_open());
    });
}
