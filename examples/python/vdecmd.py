#!/usr/bin/env python3
"""Send commands to a vde_switch management console (vde_switch -M SOCK,
ipn vde --mgmt SOCK, ipn mgmt NET --mgmt SOCK) and parse the replies, as
scripts written for vde_switch do.

    vdecmd.py SOCK COMMAND...

For each COMMAND it prints one line "CODE TEXT" (1000 Success, 1022
Invalid argument, ...), preceded by the data lines of the reply, each
prefixed with "| ". With --shape it prints, instead of the data lines,
only how many there were ("data N"), so that the replies of two switches
can be compared by their structure. It exits 0 if every command answered
1000, 1 if one did not, 2 if the console broke the framing.
"""

import socket
import sys

PROMPT = b"\nvde$ "
DATA = "0000 DATA END WITH '.'"
EOS = "9999 END OF SESSION"


class FramingError(Exception):
    pass


class Console:
    def __init__(self, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.banner = self._until(PROMPT)

    def _until(self, token):
        while token not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise FramingError("the console closed the session; got %r" % self.buf)
            self.buf += d
        i = self.buf.index(token) + len(token)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out[: -len(token)]

    def command(self, cmd):
        """Returns (data lines or None, code, text)."""
        self.s.sendall(cmd.encode() + b"\n")
        if cmd.strip() == "" or cmd.strip().startswith("#"):
            if self._until(PROMPT) != b"":
                raise FramingError("a blank line or a comment got a reply")
            return None, 0, "(no reply)"
        if cmd.strip() in ("logout", "shutdown"):
            # The session ends ("9999 END OF SESSION", then EOF), unless
            # the command is refused (a code line and the prompt).
            while PROMPT not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    if self.buf.decode() != EOS:
                        raise FramingError("%s answered %r" % (cmd, self.buf))
                    return None, 9999, "END OF SESSION"
                self.buf += d
        reply = self._until(PROMPT).decode().split("\n")
        if reply and reply[-1] == "":
            reply = reply[:-1]  # the newline of the code line
        data = None
        if reply and reply[0] == DATA:
            try:
                end = reply.index(".")
            except ValueError:
                raise FramingError("no '.' after the data: %r" % reply)
            data, reply = reply[1:end], reply[end + 1 :]
        if len(reply) != 1 or len(reply[0]) < 5 or not reply[0][:4].isdigit():
            raise FramingError("no code line: %r" % reply)
        return data, int(reply[0][:4]), reply[0][5:]


def main(argv):
    shape = False
    if argv and argv[0] == "--shape":
        shape, argv = True, argv[1:]
    if len(argv) < 2:
        print("usage: vdecmd.py [--shape] SOCK COMMAND...", file=sys.stderr)
        return 2
    try:
        c = Console(argv[0])
        ok = True
        for cmd in argv[1:]:
            data, code, text = c.command(cmd)
            if data is not None:
                if shape:
                    print("data %d" % len(data))
                else:
                    for l in data:
                        print("| " + l)
            print("%d %s" % (code, text))
            ok = ok and code in (1000, 9999)
    except (FramingError, OSError) as e:
        print("vdecmd.py: %s" % e, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
