#!/usr/bin/env python3
"""Extract one Jane Austen novel from Debian's `r-cran-janeaustenr` package into a UTF-8 text file:
the default calibration text shipped in `python/lowbit/calib/texts/` (run once; stdlib only).

    apt-get download r-cran-janeaustenr
    dpkg-deb -x r-cran-janeaustenr_*_all.deb pkg
    python3 scripts/extract_austen.py pkg/usr/lib/R/site-library/janeaustenr/data persuasion \\
        python/lowbit/calib/texts/persuasion.txt

The package keeps its data sets in an R lazy-load database, `Rdata.rdb` + `Rdata.rdx`:
- `Rdata.rdx` is one R-serialized object (gzip- or zlib-compressed): a named list whose `variables`
  element maps each object name to an integer vector (byte offset, byte length) into `Rdata.rdb`;
- at that place `Rdata.rdb` holds a 4-byte big-endian uncompressed length and a zlib stream of the
  object's R serialization (XDR format, version 2 or 3).
Each novel is a character vector, one element per line of the printed book (empty elements are
blank lines). The output is those lines joined with "\\n", plus a final newline.

Only the part of R's serialization format these files use is read (NULL, symbols, pairlists, generic
vectors, character / integer / double / logical vectors, references to earlier symbols, attributes);
anything else is an error, never a guess.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

# SEXP type codes of R's serialization format (R Internals, "Serialization formats").
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
IS_OBJECT, HAS_ATTR, HAS_TAG = 1 << 8, 1 << 9, 1 << 10
NA_LENGTH = -1


class RReader:
    """A reader of one XDR ("X\\n") R serialization stream."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError(f"not an XDR R serialization (starts with {data[:2]!r})")
        self.data, self.pos = data, 2
        self.refs: list[Any] = []
        version = self.i32()
        self.i32(), self.i32()  # writer's R version, minimal reader version
        if version == 3:
            n = self.i32()  # length of the native encoding name, which follows
            self.pos += n
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported")

    def i32(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(v)

    def length(self) -> int:
        n = self.i32()
        if n == NA_LENGTH:  # a long vector: two more ints, upper and lower 32 bits
            n = (self.i32() << 32) | (self.i32() & 0xFFFFFFFF)
        return n

    def charsxp(self) -> str | None:
        flags = self.i32()
        if flags & 0xFF != CHARSXP:
            raise ValueError(f"expected a CHARSXP, got type {flags & 0xFF}")
        n = self.i32()
        if n == NA_LENGTH:
            return None
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        # Levels bit 2 marks latin-1; UTF-8 (bit 3), ASCII (bit 6) and native strings are UTF-8 here.
        return raw.decode("latin-1" if (flags >> 12) & 4 else "utf-8")

    def item(self) -> Any:
        flags = self.i32()
        kind = flags & 0xFF
        if kind == NILVALUE_SXP:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.i32()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.charsxp()
            self.refs.append(name)
            return name
        if kind == LISTSXP:  # pairlist: [attributes] [tag] car cdr
            out: dict[Any, Any] = {}
            while kind == LISTSXP:
                if flags & HAS_ATTR:
                    self.item()
                tag = self.item() if flags & HAS_TAG else len(out)
                out[tag] = self.item()
                flags = self.i32()
                kind = flags & 0xFF
            if kind != NILVALUE_SXP:
                raise ValueError(f"pairlist ends with type {kind}")
            return out
        if kind == STRSXP:
            value: Any = [self.charsxp() for _ in range(self.length())]
        elif kind == VECSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind in (LGLSXP, INTSXP):
            n = self.length()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        else:
            raise ValueError(f"R object type {kind} at byte {self.pos - 4} is not supported")
        if flags & HAS_ATTR:
            attrs = self.item()
            names = attrs.get("names")
            if names is not None and kind == VECSXP:
                value = dict(zip(names, value, strict=True))
        return value


def _decompress(blob: bytes) -> bytes:
    """A .rdx file is gzip (saveRDS) or, like each .rdb record, a 4-byte length + zlib stream."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    (n,) = struct.unpack_from(">I", blob, 0)
    out = zlib.decompress(blob[4:])
    if len(out) != n:
        raise ValueError(f"decompressed {len(out)} bytes, the record says {n}")
    return out


def read_object(data_dir: Path, name: str) -> Any:
    """The R object `name` of the lazy-load database `data_dir/Rdata.{rdx,rdb}`."""
    index = RReader(_decompress((data_dir / "Rdata.rdx").read_bytes())).item()
    variables = index["variables"]
    if name not in variables:
        raise KeyError(f"{name!r} is not in the database; it has {sorted(variables)}")
    offset, length = variables[name]
    with open(data_dir / "Rdata.rdb", "rb") as f:
        f.seek(offset)
        record = f.read(length)
    return RReader(_decompress(record)).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, help="janeaustenr's data/ directory (Rdata.rdb, Rdata.rdx)")
    ap.add_argument("novel", help="object name: persuasion, emma, prideprejudice, ...")
    ap.add_argument("out", type=Path, help="output UTF-8 text file")
    args = ap.parse_args()
    try:
        lines = read_object(args.data_dir, args.novel)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
        raise SystemExit(f"{args.novel} is not a character vector without NA")
    body = ("\n".join(lines).strip("\n") + "\n").encode("utf-8")
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(args.out)
    sha = hashlib.sha256(body).hexdigest()
    print(f"{args.out}: {len(lines)} lines, {len(body)} bytes, sha256 {sha}", file=sys.stderr)


if __name__ == "__main__":
    main()
