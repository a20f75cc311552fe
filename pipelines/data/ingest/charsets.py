"""Text encodings: reading a declared non-UTF-8 encoding, and naming the likely one on failure.

Everything downstream of the readers sees UTF-8 bytes. A source declared in another encoding
(`encoding: gb18030`) is recoded on the fly by an incremental decoder, so memory stays bounded
and the UTF-8 default path is untouched. A byte the declared codec cannot decode travels as an
encoded lone surrogate (never valid UTF-8), so its line is rejected like any undecodable line,
and `original_bytes` recovers what the file held, for the detector.

When records fail to decode, charset-normalizer guesses the encoding from those records' own
bytes (at most SNIFF_BYTES): ASCII around them would only dilute the guess.
"""

from __future__ import annotations

import codecs
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, TextIO

from pipelines.data.ingest.records import SAMPLE_CHARS, Reject

SNIFF_BYTES = 64 << 10  # detection is ~2 ms on 64 KiB and reliable from a few hundred bytes
MIN_SNIFF = 32  # non-ASCII bytes below which a guess is noise (measured: ~16 Chinese characters)
READ_BYTES = 1 << 16

# Detector answers -> (what to call the encoding, the setting that reads the whole family).
# GB18030 is a superset of GBK and GB2312, so it decodes all three the same way.
FAMILIES = {
    "gb18030": ("GB18030/GBK (simplified Chinese)", "gb18030"),
    "gbk": ("GB18030/GBK (simplified Chinese)", "gb18030"),
    "gb2312": ("GB18030/GBK (simplified Chinese)", "gb18030"),
    "hz": ("GB18030/GBK (simplified Chinese)", "gb18030"),
    "big5": ("Big5 (traditional Chinese)", "big5"),
    "cp950": ("Big5 (traditional Chinese)", "cp950"),
    "big5hkscs": ("Big5-HKSCS (traditional Chinese, Hong Kong)", "big5hkscs"),
    "utf_8": ("UTF-8", "utf-8"),
    "utf_16": ("UTF-16", "utf-16"),
    "utf_32": ("UTF-32", "utf-32"),
    "cp932": ("Shift_JIS (Japanese)", "cp932"),
    "shift_jis": ("Shift_JIS (Japanese)", "cp932"),
    "euc_jp": ("EUC-JP (Japanese)", "euc_jp"),
    "cp949": ("EUC-KR (Korean)", "cp949"),
    "euc_kr": ("EUC-KR (Korean)", "cp949"),
}


def codec_name(encoding: str) -> str:
    """Python's canonical name of a codec: "UTF8", "utf_8" and "utf-8" are one encoding."""
    return codecs.lookup(encoding).name


def is_utf8(encoding: str) -> bool:
    """UTF-8, with or without a byte-order mark: read by the default (fast) path."""
    return codec_name(encoding) in ("utf-8", "utf-8-sig")


def display_name(encoding: str) -> str:
    return "UTF-8" if is_utf8(encoding) else encoding


class _Recoded(io.RawIOBase):
    """Bytes in `encoding` -> the same text as UTF-8 bytes, decoded incrementally: a character
    split across two reads is completed by the next one. An undecodable byte b becomes the
    UTF-8 form of the lone surrogate U+DC00+b (three bytes no UTF-8 decoder accepts)."""

    def __init__(self, raw: BinaryIO, encoding: str) -> None:
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)("surrogateescape")
        self._out, self._offset, self._done = b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while self._offset == len(self._out):
            if self._done:
                return 0
            chunk = self._raw.read(READ_BYTES)
            self._done = not chunk
            text = self._decoder.decode(chunk, final=self._done)
            self._out, self._offset = text.encode("utf-8", "surrogatepass"), 0
        n = min(len(buffer), len(self._out) - self._offset)
        buffer[:n] = self._out[self._offset : self._offset + n]
        self._offset += n
        return n


def recoded(stream: BinaryIO, encoding: str, buffer_size: int) -> BinaryIO:
    """`stream` as UTF-8 bytes; UTF-8 itself is returned as it is."""
    if is_utf8(encoding):
        return stream
    return io.BufferedReader(_Recoded(stream, encoding), buffer_size)


def decode(data: bytes, encoding: str) -> str:
    """One value's bytes as the readers decode them: undecodable bytes become lone surrogates,
    in the same form a recoded stream gives them (so `original_bytes` inverts both)."""
    if is_utf8(encoding):
        return data.decode("utf-8", "surrogateescape")
    text = data.decode(encoding, "surrogateescape")
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape")


def original_bytes(text: str, encoding: str) -> bytes:
    """The file's bytes behind a text that failed to decode (b"" when they are not known: a
    JSON-escaped lone surrogate, say)."""
    try:
        data = text.encode("utf-8", "surrogateescape")
        if is_utf8(encoding):
            return data
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as error:  # a sequence cut where the text was cut
            text = data[: error.start].decode("utf-8", "surrogatepass")
        return text.encode(encoding, "surrogateescape")
    except UnicodeError:
        return b""


def guess(data: bytes) -> str | None:
    """charset-normalizer's best guess (Python codec name) for `data`, or None."""
    from charset_normalizer import from_bytes  # lazy: only a failed decode pays its import

    data = data[:SNIFF_BYTES]
    if len(data) == SNIFF_BYTES and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        data = data[: data.rfind(b"\n") + 1] or data  # a character cut in two fits no codec
    best = from_bytes(data).best()
    return None if best is None else best.encoding


def advice(data: bytes, declared: str, where: str) -> str:
    """What to do about bytes that are not `declared`: the likely encoding and the setting that
    reads it, e.g. "it looks like Big5 (traditional Chinese): set `encoding: big5` on this
    source". `where` names the spec entry ("source", "task")."""
    if sum(byte >= 0x80 for byte in data) < MIN_SNIFF:
        return (
            f"too few bytes to tell which encoding it is; set `encoding:` on this {where} to "
            f"the file's encoding, or convert it to UTF-8 with iconv"
        )
    found = guess(data)
    if found is not None:
        name, setting = FAMILIES.get(codec_name(found).replace("-", "_"), (found, found))
        both_utf8 = is_utf8(setting) and is_utf8(declared)
        if codec_name(setting) != codec_name(declared) and not both_utf8:
            return f"it looks like {name}: set `encoding: {setting}` on this {where}"
    return (
        f"no other encoding fits these bytes (corrupt or binary data?); if the file is text, "
        f"set `encoding:` on this {where} to its encoding, or convert it to UTF-8 with iconv"
    )


def open_text(path: Path, encoding: str, newline: str | None = None) -> TextIO:
    """A text file for reading in `encoding`; UTF-8 drops a byte-order mark."""
    return open(path, encoding="utf-8-sig" if is_utf8(encoding) else encoding, newline=newline)


def undecodable_file(path: Path, encoding: str, where: str) -> str:
    """Why a file does not decode: its first bad line and the likely encoding, e.g.
    "t.csv:1: not valid UTF-8; it looks like GB18030/GBK (...): set `encoding: gb18030` on this
    task". Only a file that already failed is read again (line by line)."""
    with open(path, "rb") as stream:
        found = first_undecodable(stream, encoding)
    line, data = found or (0, b"")
    return f"{path}:{line}: not valid {display_name(encoding)}; {advice(data, encoding, where)}"


def first_undecodable(stream: BinaryIO, encoding: str) -> tuple[int, bytes] | None:
    """The 1-based line of a file's first undecodable line and up to SNIFF_BYTES of its bytes
    from that line on; None when the whole file decodes. Reads line by line (bounded by the
    longest line), so only a file that already failed pays for it."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    number = 0
    for number, line in enumerate(stream, start=1):
        try:
            decoder.decode(line)
        except UnicodeDecodeError:
            return number, line[:SNIFF_BYTES] + stream.read(max(0, SNIFF_BYTES - len(line)))
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return number, b""
    return None


@dataclass
class Undecodable:
    """One file's undecodable records: how many, where the first is, and the first SNIFF_BYTES
    of their bytes for the detector."""

    encoding: str  # the source's declared encoding
    count: int = 0
    first: int = 0
    data: bytearray = field(default_factory=bytearray)

    def take(self, rejects: list[Reject]) -> list[Reject]:
        """Count the batch's undecodable rejects and return the rejects to write: their text
        dropped, their reason invalid_encoding when the source is not UTF-8."""
        if not any(r.undecoded for r in rejects):
            return rejects
        reason = "invalid_utf8" if is_utf8(self.encoding) else "invalid_encoding"
        kept = []
        for reject in rejects:
            if reject.undecoded:
                self.count += 1
                self.first = self.first or reject.position
                data = original_bytes(reject.undecoded, self.encoding)
                if len(self.data) < SNIFF_BYTES:
                    self.data += data + b"\n"
                reject = replace(reject, reason=reason, undecoded="")
                if reason == "invalid_encoding":  # one U+FFFD per bad byte, not three
                    sample = data.decode(self.encoding, "replace")[:SAMPLE_CHARS]
                    reject = replace(reject, sample=sample or reject.sample)
            kept.append(reject)
        return kept

    def hint(self, path: object, unit: str) -> str:
        """E.g. "news.txt: 120 records are not valid UTF-8 (the first at line 1); it looks like
        GB18030/GBK (simplified Chinese): set `encoding: gb18030` on this source"."""
        records = "1 record is" if self.count == 1 else f"{self.count:,} records are"
        return (
            f"{path}: {records} not valid {display_name(self.encoding)} (the first at {unit} "
            f"{self.first}); {advice(bytes(self.data), self.encoding, 'source')}"
        )
