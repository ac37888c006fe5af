"""The virus scanner seam: a scan of one file, called on the attachment
worker pool (blocking is fine there).

- :class:`ClamdScanner` speaks clamd's ``INSTREAM`` command over its Unix
  or TCP socket: ``zINSTREAM\\0``, then the file in chunks, each prefixed
  with its length as a 4-byte big-endian integer, then a zero length; clamd
  answers ``stream: OK`` or ``stream: <signature> FOUND`` (or an ``ERROR``
  line, for instance past its ``StreamMaxLength``).
- :class:`SignatureScanner` is the in-memory twin: it finds given byte
  strings.

A scanner that cannot answer raises :class:`ScannerUnavailable`; what
happens then is ``[attachments] scanner_down`` (refuse, or accept and flag).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Mapping, Protocol

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Verdict:
    """``infected`` is the signature's name, None when clean."""

    infected: str | None = None


class ScannerUnavailable(Exception):
    """The scanner could not be asked or gave no verdict."""


class Scanner(Protocol):
    def scan(self, path: str) -> Verdict:
        """Scan the file at ``path`` (blocking; runs on the worker pool)."""


class SignatureScanner:
    """The twin: a file is infected when it contains one of ``signatures``
    (bytes -> name); ``down`` makes every scan raise ScannerUnavailable."""

    def __init__(self, signatures: Mapping[bytes, str], down: bool = False) -> None:
        self.signatures = dict(signatures)
        self.down = down
        self.scanned = 0

    def scan(self, path: str) -> Verdict:
        if self.down:
            raise ScannerUnavailable("scanner down (twin)")
        self.scanned += 1
        with open(path, "rb") as f:
            data = f.read()
        for needle, name in self.signatures.items():
            if needle in data:
                return Verdict(name)
        return Verdict()


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """``unix:/run/clamav/clamd.ctl`` or ``tcp:HOST:PORT`` -> (family, address)."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ValueError("must be unix:PATH or tcp:HOST:PORT")


class ClamdScanner:
    """clamd's INSTREAM protocol on a blocking socket, with a timeout on
    every step (``timeout`` seconds)."""

    def __init__(self, address: str, timeout: float = 30.0, chunk: int = CHUNK) -> None:
        self.family, self.address = parse_address(address)
        self.timeout = timeout
        self.chunk = chunk

    def scan(self, path: str) -> Verdict:
        try:
            with socket.socket(self.family, socket.SOCK_STREAM) as s, open(path, "rb") as f:
                s.settimeout(self.timeout)
                s.connect(self.address)
                s.sendall(b"zINSTREAM\0")
                while True:
                    data = f.read(self.chunk)
                    if not data:
                        break
                    s.sendall(struct.pack(">I", len(data)) + data)
                s.sendall(struct.pack(">I", 0))
                answer = b""
                while not answer.endswith(b"\0"):
                    got = s.recv(4096)
                    if not got:
                        break
                    answer += got
                    if len(answer) > 4096:
                        break
        except OSError as e:
            raise ScannerUnavailable(f"clamd: {type(e).__name__}") from None
        return parse_answer(answer)


def parse_answer(answer: bytes) -> Verdict:
    """clamd's answer line to a Verdict, or ScannerUnavailable."""
    line = answer.rstrip(b"\0\n").decode("utf-8", "replace")
    _, _, result = line.partition(": ")
    if result == "OK":
        return Verdict()
    if result.endswith(" FOUND"):
        return Verdict(result[: -len(" FOUND")] or "unknown")
    raise ScannerUnavailable(f"clamd answered {line[:100]!r}")
