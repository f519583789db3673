#!/usr/bin/env python3
"""Stalled WebSocket clients for the sluice lobby demo.

Each client sets SO_RCVBUF to 4096 *before* connect (so the TCP window it advertises stays tiny),
does the WebSocket upgrade by hand, reads exactly the 101 response header and then never calls
recv() again. Whatever the server sends piles up first in this socket's small receive queue, then
in the server's kernel send queue, and finally in sluice's per-connection outbox, where the
maxBufferedAmount policy has to deal with it.

Node cannot set SO_RCVBUF on a client socket, hence Python.

Usage: stalled.py PORT COUNT [PATH] [MSS]   (MSS 0 = leave the loopback default)
Reports JSON lines on stdout:
  {"event": "ready", "i": 0, "localPort": 51234, "rcvbuf": 8192}
  {"event": "state", "i": 0, "tcp": "CLOSE_WAIT", "recvQueue": 7890, "t": 12.3}
  {"event": "done", ...}
The script never reads from the WebSocket sockets after the handshake; it only looks at their
TCP state (TCP_INFO) and at how many bytes sit unread in their receive queue (FIONREAD), once a
second, to report when the server cut them off. It exits when stdin closes or on SIGTERM/SIGINT.
"""

import base64
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}


def emit(obj):
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the parent is gone
        pass


def tcp_state(sock):
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return TCP_STATES.get(info[0], str(info[0]))
    except OSError:
        return "ERROR"


def recv_queue(sock):
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]
    except OSError:
        return -1


def open_stalled(port, path, i, mss):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window scale
    if mss:
        # Advertise an Internet-sized MSS in our SYN instead of loopback's ~64 KiB: Linux sizes the
        # server's initial send buffer per MSS, so on loopback a stalled peer would otherwise let the
        # server's kernel absorb ~4 MiB before anything queues in sluice (see lobby.js).
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"User-Agent: sluice-demo-stalled/{i}\r\n"
        "\r\n"
    )
    s.sendall(req.encode())
    # Read the response header one byte at a time so that not a single byte of WebSocket data is
    # consumed: after the blank line, this socket is never read again.
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise ConnectionError("server closed during handshake")
        head += b
        if len(head) > 8192:
            raise ConnectionError("response header too long")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 101 " not in status + " ":
        raise ConnectionError(f"upgrade refused: {status}")
    s.setblocking(False)
    return s


def main():
    port = int(sys.argv[1])
    count = int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    mss = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    socks = []
    t0 = time.monotonic()
    for i in range(count):
        try:
            s = open_stalled(port, path, i, mss)
        except Exception as e:  # report and carry on with the others
            emit({"event": "error", "i": i, "error": str(e)})
            continue
        socks.append((i, s))
        emit({
            "event": "ready", "i": i, "localPort": s.getsockname()[1],
            "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            "mss": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        })
    emit({"event": "allReady", "count": len(socks)})

    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    last = {i: "ESTABLISHED" for i, _ in socks}
    while not stop:
        # Wake once a second, or when the parent closes our stdin (it died or wants us gone).
        try:
            r, _, _ = select.select([sys.stdin], [], [], 1.0)
        except InterruptedError:
            continue
        if r and not sys.stdin.buffer.read1(4096):
            break
        for i, s in socks:
            st = tcp_state(s)
            if st != last[i]:
                last[i] = st
                emit({"event": "state", "i": i, "tcp": st, "recvQueue": recv_queue(s),
                      "t": round(time.monotonic() - t0, 3)})
    emit({"event": "done", "states": {str(i): last[i] for i, _ in socks},
          "recvQueue": {str(i): recv_queue(s) for i, s in socks}})
    for _, s in socks:
        s.close()


if __name__ == "__main__":
    main()
