# The MicroPython REPL of the simulated board on its serial line, as
# shared/runtime/pyexec.c implements it, so that mpremote (and anything that
# speaks the raw REPL) can drive the board:
#   friendly REPL   ">>> ", line input, Ctrl-A raw REPL, Ctrl-D soft reset
#   raw REPL        Ctrl-A (re)enter, Ctrl-B friendly, Ctrl-C clear, Ctrl-D run
#                   ("OK", output, EOF, error output, EOF, ">"); an empty
#                   Ctrl-D is a soft reset
#   raw-paste       Ctrl-E 'A' Ctrl-A -> "R\x01" + window, flow control \x01
# Ctrl-C while code runs arrives as SIGINT from the harness's serial bridge
# and becomes KeyboardInterrupt, as the UART interrupt does on a board.
import select
import sys

import simboard

_WINDOW = const(256)
_SLICE_MS = const(20)
_stdin = []  # the poll object waiting on stdin, made once
BANNER = ("MicroPython v1.29.0 on 2026-08-29; ESP32 module (simulated by mpota) with ESP32\r\n"
          'Type "help()" for more information.\r\n')


def _out(text):
    sys.stdout.write(text)


def _wait():
    # Wait for input in short slices, as a board's REPL waits on its UART:
    # scheduled callbacks (a machine.Timer feeding the watchdog) run between
    # them.  A blocking read would hold every one of them until a key came.
    if not _stdin:
        p = select.poll()
        p.register(sys.stdin, select.POLLIN)
        _stdin.append(p)
    while not _stdin[0].poll(_SLICE_MS):
        pass


def _getc():
    while True:
        try:
            _wait()
            c = sys.stdin.buffer.read(1)
        except KeyboardInterrupt:
            return 3  # Ctrl-C while waiting for input
        if not c:
            # the serial bridge went away: nobody can talk to this board any more
            simboard.board().die("serial-closed")
        return c[0]


def _run(code, ns, raw):
    try:
        exec(compile(code, "<stdin>", "exec"), ns)
    except SystemExit:
        simboard.board().die("soft-reset raw" if raw else "soft-reset")
    except BaseException as e:
        if raw:
            _out("\x04")
            sys.print_exception(e, sys.stdout)
            _out("\x04")
            return
        sys.print_exception(e, sys.stdout)
        return
    if raw:
        _out("\x04\x04")


def _raw_paste(ns):
    _out("R\x01")
    sys.stdout.buffer.write(bytes((_WINDOW & 0xFF, _WINDOW >> 8)))  # not UTF-8
    data = bytearray()
    remain = _WINDOW
    while True:
        c = _getc()
        if c == 4:
            _out("\x04")
            break
        if c == 3:
            _out("\x04")  # abort: the host acknowledges with Ctrl-D
            return
        data.append(c)
        remain -= 1
        if remain == 0:
            _out("\x01")
            remain = _WINDOW
    _run(bytes(data), ns, True)


def raw_repl(ns):
    _out("raw REPL; CTRL-B to exit\r\n")
    while True:
        _out(">")
        line = bytearray()
        while True:
            c = _getc()
            if c == 1:
                if len(line) == 2 and line[0] == 5:
                    _raw_paste(ns)
                    break
                _out("raw REPL; CTRL-B to exit\r\n")
                line = bytearray()
                _out(">")
                continue
            if c == 2:
                _out("\r\n")
                return "friendly"
            if c == 3:
                line = bytearray()
                continue
            if c == 4:
                _out("OK")
                if not line:
                    _out("\r\n")
                    simboard.board().die("soft-reset raw")
                _run(bytes(line), ns, True)
                break
            line.append(c)


def friendly_repl(ns):
    _out(BANNER)
    while True:
        _out(">>> ")
        line = bytearray()
        while True:
            c = _getc()
            if c == 1:
                _out("\r\n")
                return "raw"
            if c == 2:
                _out("\r\n" + BANNER)
                line = bytearray()
                _out(">>> ")
                continue
            if c == 3:
                _out("\r\n")
                break
            if c == 4:
                if not line:
                    _out("\r\n")
                    simboard.board().die("soft-reset")
                continue
            if c in (13, 10):
                _out("\r\n")
                text = bytes(line).decode()
                if text.strip():
                    try:
                        value = eval(text, ns)
                        if value is not None:
                            _out(repr(value) + "\r\n")
                    except SyntaxError:
                        _run(text, ns, False)
                    except BaseException as e:
                        sys.print_exception(e, sys.stdout)
                break
            if c in (8, 127):
                if line:
                    line.pop()
                    _out("\b \b")
                continue
            line.append(c)
            _out(chr(c))


def serve(ns, raw=False):
    mode = "raw" if raw else "friendly"
    while True:
        try:
            mode = raw_repl(ns) if mode == "raw" else friendly_repl(ns)
        except KeyboardInterrupt:
            # Ctrl-C while the REPL itself was busy (printing a prompt): on a
            # board the UART interrupt only clears the line; start the mode again
            continue
