"""Real files for the attachment tests, made with Pillow and by hand."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 100


def png_with_gps(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG whose EXIF holds a camera model and a GPS position."""
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG", exif=exif)
    return out.getvalue()


def jpeg_with_gps(size: tuple[int, int] = (64, 48), orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}
    out = io.BytesIO()
    Image.new("RGB", size, (30, 200, 30)).save(out, "JPEG", exif=exif)
    return out.getvalue()


def image(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 20, 200) if mode == "RGB" else (10, 20, 200, 128)).save(out, fmt)
    return out.getvalue()


def animated_gif(frames: int = 3) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (20, 20), (i * 60, 255 - i * 60, 0)) for i in range(frames)]
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0, comment=b"secret")
    return out.getvalue()


def polyglot_png_zip() -> bytes:
    """A valid PNG that is also a valid ZIP (an archive appended after IEND)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return image("PNG") + archive.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (a decompression bomb's
    header: a few bytes declaring gigapixels) with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(
        b"IEND", b"")


def corrupt_png() -> bytes:
    data = image("PNG", (300, 300))
    return data[:80] + b"\x00" * 40 + data[120:200]


def multipart(fields: list[tuple[str, str | None, bytes, str]], boundary: str = "----scTestBoundary7MA4YWxk") -> \
        tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form: fields are
    (name, filename or None, value, declared content type)."""
    out = b""
    for name, filename, value, ctype in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"
