#!/usr/bin/env python3
"""Join an IPN network through the ipn daemon, using plain Unix sockets.

    python3 ipn_join.py PATH [MESSAGE]

Connects to the network at PATH, prints "port N" to stderr, sends MESSAGE
as one message if given, then prints the first message received (waiting
up to 10 s) as one line on stdout. Exit status: 0 on success, 1 on error,
2 if no message came in time.

It follows docs/protocol.md only and needs nothing but Python 3.9+ on
Linux. It does not start a daemon: one must be serving (`ipn daemon`).
"""

import errno
import os
import select
import socket
import struct
import sys
import time

OP_HELLO = 1
OP_CONNECT = 5
OP_OOB = 0x4000
REPLY_BIT = 0x8000
VERSION = 1
PROTO_ANY = 0
SIDE_READ, SIDE_WRITE = 1, 2

SYSTEM_SOCKET = "/run/ipn/ipn.sock"
MAX_CONTROL = 8 + 65536 + 64  # largest control packet we expect
MAX_MESSAGE = 65536  # larger than the largest MTU (65535)
TIMEOUT = 10.0

PROG = "ipn_join"


class IpnError(Exception):
    """An error reported by the daemon or the kernel, with its errno."""

    def __init__(self, err, detail=None):
        super().__init__(err)
        self.errno = err
        self.detail = detail

    def __str__(self):
        name = errno.errorcode.get(self.errno, "errno %d" % self.errno)
        return name + (" (%s)" % self.detail if self.detail else "")


def fail(what, err, status=1):
    print("%s: %s: %s" % (PROG, what, err), file=sys.stderr)
    sys.exit(status)


def user_socket():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "ipn", "ipn.sock")
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(tmp, "ipn-%d" % os.geteuid(), "ipn.sock")


def control_candidates():
    """Control sockets to try, in order (docs/protocol.md, "The daemon")."""
    env = os.environ.get("IPN_SOCKET")
    if env:
        return [env]
    if os.geteuid() == 0:
        return [SYSTEM_SOCKET]
    paths = [SYSTEM_SOCKET] if os.path.exists(SYSTEM_SOCKET) else []
    return paths + [user_socket()]


def dial():
    last = None
    for path in control_candidates():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            last = (path, e.strerror or e)
    fail("no ipn daemon at " + last[0], last[1])


def recv_packet(ctl):
    """Read one control packet: (op, body, fds). Raises IpnError."""
    data, fds, flags, _ = socket.recv_fds(ctl, MAX_CONTROL, 4)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        close_fds(fds)
        raise IpnError(errno.EPROTO, "truncated packet from the daemon")
    if not data:
        close_fds(fds)
        raise IpnError(errno.ECONNRESET, "the daemon closed the connection")
    if len(data) < 4:
        close_fds(fds)
        raise IpnError(errno.EPROTO, "short packet from the daemon")
    (op,) = struct.unpack_from("<H", data)
    return op, data[4:], fds


def close_fds(fds):
    for fd in fds:
        os.close(fd)


def request(ctl, op, body, fds=()):
    """Send a request and return its reply's (body, fds); OOB events that
    arrive meanwhile are skipped. Raises IpnError on a nonzero errno."""
    pkt = struct.pack("<HH", op, 0) + body
    if fds:
        socket.send_fds(ctl, [pkt], list(fds))
    else:
        ctl.send(pkt)
    while True:
        rop, rbody, rfds = recv_packet(ctl)
        if rop == OP_OOB:
            close_fds(rfds)
            continue
        if rop != op | REPLY_BIT or len(rbody) < 4:
            close_fds(rfds)
            raise IpnError(errno.EPROTO, "unexpected reply op %#x" % rop)
        (err,) = struct.unpack_from("<i", rbody)
        if err != 0:
            close_fds(rfds)
            raise IpnError(err)
        return rbody[4:], rfds


def connect(ctl, path):
    """Join the network at path; return (data socket, port, mtu, sides)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise IpnError(e.errno) from None
    try:
        body, fds = request(ctl, OP_CONNECT, os.fsencode(path), [fd])
    finally:
        os.close(fd)
    if len(fds) != 1 or len(body) < 12:
        close_fds(fds)
        raise IpnError(errno.EPROTO, "bad connect reply")
    port, mtu, _proto, sides = struct.unpack_from("<IIHH", body)
    data = socket.socket(fileno=fds[0])
    return data, port, mtu, sides


def wait_message(data, ctl, deadline):
    """Return the first message on the data socket, or None on timeout."""
    poller = select.poll()
    poller.register(data.fileno(), select.POLLIN)
    poller.register(ctl.fileno(), select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        for fd, _ in poller.poll(int(left * 1000) + 1):
            if fd == data.fileno():
                msg = data.recv(MAX_MESSAGE)
                if not msg:
                    raise IpnError(errno.ECONNRESET, "the network closed the data socket")
                return msg
            # Control connection: an OOB event (skipped) or the daemon gone.
            _, _, fds = recv_packet(ctl)
            close_fds(fds)


def main(argv):
    if len(argv) not in (2, 3):
        print("usage: %s PATH [MESSAGE]" % PROG, file=sys.stderr)
        return 1
    path = os.path.abspath(argv[1])
    message = os.fsencode(argv[2]) if len(argv) == 3 else None
    if message == b"":
        fail("send " + path, "empty messages cannot be sent")

    ctl = dial()
    data = None
    try:
        try:
            hello = struct.pack("<HH", VERSION, PROTO_ANY)
            request(ctl, OP_HELLO, hello)
        except IpnError as e:
            fail("hello", e)
        try:
            data, port, mtu, sides = connect(ctl, path)
        except IpnError as e:
            fail("connect " + path, e)
        print("port %d" % port, file=sys.stderr)

        if message is not None:
            if not sides & SIDE_WRITE:
                fail("send " + path, IpnError(errno.EPIPE, "no w permission"))
            if len(message) > mtu:
                fail("send " + path, IpnError(errno.EOVERFLOW, "MTU is %d" % mtu))
            try:
                data.send(message)
            except OSError as e:
                fail("send " + path, IpnError(e.errno))

        if not sides & SIDE_READ:
            fail("recv " + path, IpnError(errno.EPIPE, "no r permission"))
        try:
            msg = wait_message(data, ctl, time.monotonic() + TIMEOUT)
        except IpnError as e:
            fail("recv " + path, e)
        except OSError as e:
            fail("recv " + path, IpnError(e.errno))
        if msg is None:
            fail("recv " + path, "no message within %g s" % TIMEOUT, 2)
        sys.stdout.write(msg.decode("utf-8", errors="replace") + "\n")
        sys.stdout.flush()
        return 0
    finally:
        # Data socket first, so the daemon takes every message written.
        if data is not None:
            data.close()
        ctl.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
