"""An image file's format and pixel size read from its first bytes, without decoding it.

`read_rgb` checks the size against its pixel limit before OpenCV allocates anything, so a 20000x20000 PNG or a
decompression bomb is refused for the cost of reading a header. Every format this OpenCV build decodes is parsed
(PNG, JPEG, WebP, BMP, GIF, TIFF, PNM/PAM/PFM, Radiance HDR, Sun raster, JPEG 2000, AVIF). A header that cannot be
parsed gives None: the decoder then refuses the file, or the size is checked after decoding (bounded by OpenCV's
own 2^30-pixel limit).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

__all__ = ["ImageHeader", "read_header", "structure_problem"]


@dataclass(frozen=True)
class ImageHeader:
    """What a header says: the format ('png', 'jpeg', ...) and the stored width and height in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader | None:
    """The format and size an image file's bytes declare, or None when no known header parses."""
    data = bytes(data[:65536])  # every header below sits in the first bytes, except boxes AVIF may put later
    for parse in (_png, _jpeg, _gif, _bmp, _webp, _tiff, _pnm, _hdr, _sun_raster, _jpeg2000, _avif):
        try:
            header = parse(data)
        except (struct.error, ValueError, IndexError):
            header = None
        if header is not None:
            return header if header.width > 0 and header.height > 0 else None
    return None


def _png(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("png", width, height)


# Start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8) or DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return ImageHeader("jpeg", width, height)
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        position += 2 + length
    return None


def _gif(data: bytes) -> ImageHeader | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("gif", width, height)


def _bmp(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return ImageHeader("bmp", abs(width), abs(height))  # a negative height is a top-down bitmap


def _webp(data: bytes) -> ImageHeader | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height)
    return None


def _tiff(data: bytes) -> ImageHeader | None:
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count_format, entry_size, count_size = "H", 12, 2
    elif version == 43:  # BigTIFF
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count_format, entry_size, count_size = "Q", 20, 8
    else:
        return None
    if offset + count_size > len(data):
        return None  # the first directory is past the bytes read: let the decoder judge
    count = struct.unpack(order + count_format, data[offset:offset + count_size])[0]
    found: dict[int, int] = {}
    for index in range(min(count, 4096)):
        start = offset + count_size + index * entry_size
        entry = data[start:start + entry_size]
        if len(entry) < entry_size:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            value_at = 8 if version == 42 else 12  # values are left-justified in the entry's value field
            value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if value_format is None:
                return None
            found[tag] = struct.unpack(order + value_format, entry[value_at:value_at + struct.calcsize(value_format)])[0]
    if 256 in found and 257 in found:
        return ImageHeader("tiff", found[256], found[257])
    return None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*([0-9]+)")


def _pnm(data: bytes) -> ImageHeader | None:
    magic = data[:2]
    if magic in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"PF", b"Pf"):
        width_match = _PNM_TOKEN.match(data, 2)
        if width_match is None:
            return None
        height_match = _PNM_TOKEN.match(data, width_match.end())
        if height_match is None:
            return None
        return ImageHeader("pfm" if magic in (b"PF", b"Pf") else "pnm", int(width_match.group(1)),
                           int(height_match.group(1)))
    if magic == b"P7":
        width = re.search(rb"\nWIDTH\s+([0-9]+)", data)
        height = re.search(rb"\nHEIGHT\s+([0-9]+)", data)
        if width and height:
            return ImageHeader("pam", int(width.group(1)), int(height.group(1)))
    return None


_HDR_SIZE = re.compile(rb"\n\n([-+])([XY]) ([0-9]+) ([-+])([XY]) ([0-9]+)")


def _hdr(data: bytes) -> ImageHeader | None:
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        return None
    match = _HDR_SIZE.search(data)
    if match is None:
        return None
    first_axis, first, second = match.group(2), int(match.group(3)), int(match.group(6))
    return ImageHeader("hdr", second, first) if first_axis == b"Y" else ImageHeader("hdr", first, second)


def _sun_raster(data: bytes) -> ImageHeader | None:
    if data[:4] != b"\x59\xa6\x6a\x95":
        return None
    width, height = struct.unpack(">ii", data[4:12])
    return ImageHeader("sunraster", abs(width), abs(height))


def _jpeg2000(data: bytes) -> ImageHeader | None:
    if data.startswith(b"\xff\x4f\xff\x51"):  # a raw codestream: SIZ right after SOC
        x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", data[8:24])
        return ImageHeader("jpeg2000", x_size - x_offset, y_size - y_offset)
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        at = data.find(b"ihdr")
        if at < 0:
            return None
        height, width = struct.unpack(">II", data[at + 4:at + 12])
        return ImageHeader("jpeg2000", width, height)
    return None


def _avif(data: bytes) -> ImageHeader | None:
    if data[4:8] != b"ftyp" or not any(brand in data[8:64] for brand in (b"avif", b"avis")):
        return None
    largest: tuple[int, int] | None = None
    at = data.find(b"ispe")
    while at >= 0:  # every image item's spatial extent; the canvas is the largest
        width, height = struct.unpack(">II", data[at + 8:at + 16])
        if largest is None or width * height > largest[0] * largest[1]:
            largest = (width, height)
        at = data.find(b"ispe", at + 4)
    return ImageHeader("avif", *largest) if largest else None


def structure_problem(data: bytes | memoryview, header: ImageHeader | None) -> str | None:
    """Why the file's structure cannot be right, found without decoding (None when nothing is seen).

    OpenCV 5.0's PNG reader allocates each chunk's declared length before reading it, so a 300-byte PNG whose
    chunk claims 2.4 GB took 2.4 GB (found by fuzz/images_fuzz.py): every PNG chunk must fit in the file.
    """
    if header is None or header.format != "png":
        return None
    position, size = 8, len(data)
    while position + 8 <= size:
        length = struct.unpack(">I", bytes(data[position:position + 4]))[0]
        kind = bytes(data[position + 4:position + 8])
        if length > size - position - 12:  # length, type and CRC around the data
            return (f"its PNG chunk {kind!r} at byte {position} declares {length} bytes of data, but only "
                    f"{max(size - position - 12, 0)} remain (truncated or corrupt)")
        if kind == b"IEND":
            return None
        position += 12 + length
    return None
