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
