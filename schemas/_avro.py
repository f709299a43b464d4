"""Schema-specialised Avro binary encoders/decoders for the event dataclasses (the hot path).

fastavro interprets the schema per datum (~1 us per field here, ~80 us per QueryRequested round
trip), so for each *current* schema we generate straight-line Python once, at codec build time:
an encoder from dataclass attributes to bytes and a decoder from bytes to the dataclass. The
output is byte-for-byte what fastavro writes (the property tests check that against fastavro);
older writer versions still go through fastavro's schema resolution. Only the shapes our
schemas use are supported (records, enums, arrays, maps, [null, T] unions, primitives,
timestamp-micros, uuid strings); anything else is refused when the codec is built.

The C extension ``schemas._cavro`` does the same work ~5x faster from a small "program" compiled
here (``native_program``); the generated Python stays as the fallback when the extension is not
built, and as the reference the tests hold the C codec to.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

__all__ = [
    "BACKEND_ENV",
    "NATIVE_UNAVAILABLE",
    "CodecFunctions",
    "CorruptBody",
    "codec_backend",
    "compile_codec",
    "compile_native",
    "compile_record",
    "encode_long",
    "native_program",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SMALL = 1 << 13  # varints cached for -8192..8191: every length and small int we write


class CorruptBody(ValueError):
    """The body is not a valid encoding of the writer schema."""


def encode_long(v: int) -> bytes:
    """Zig-zag varint of a 64-bit signed int (Avro int and long)."""
    if not -(1 << 63) <= v < (1 << 63):
        raise OverflowError(f"{v} does not fit an Avro long")
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class _Longs(dict[int, bytes]):
    """int -> varint bytes; small values precomputed, others computed (and not cached)."""

    def __init__(self, bits: int, prefix: bytes = b"") -> None:
        super().__init__((i, prefix + encode_long(i)) for i in range(-_SMALL, _SMALL))
        self._prefix = prefix
        self._lo, self._hi = -(1 << (bits - 1)), 1 << (bits - 1)
        self._type = "int" if bits == 32 else "long"

    def __missing__(self, v: int) -> bytes:
        if not isinstance(v, int):
            raise TypeError(f"expected int, got {type(v).__name__}")
        if not self._lo <= v < self._hi:
            raise OverflowError(f"{v} out of range for an Avro {self._type}")
        return self._prefix + encode_long(v)


def _read_long(d: bytes, p: int) -> tuple[int, int]:
    """Slow path of the inlined varint reader: multi-byte values."""
    b = d[p]
    p += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise CorruptBody("varint longer than 10 bytes")
        b = d[p]
        p += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), p


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _uuid_bytes(v: str) -> bytes:
    """A uuid-typed string, which must be a canonical (lower-case, hyphenated) UUID."""
    if _UUID(v) is None:
        raise ValueError("not a canonical lower-case UUID string")
    return v.encode()


def _array_len(v: Any) -> int:
    """Length of an array value; a str is refused (it would be written one character per item)."""
    if not isinstance(v, tuple | list):
        raise TypeError(f"expected a tuple or list, got {type(v).__name__}")
    return len(v)


@dataclass(frozen=True)
class CodecFunctions:
    """Generated functions for one record schema."""

    encode: Callable[[Any, bytes], bytes]  # (event, framing prefix) -> prefix + body
    decode: Callable[[bytes, int, int], tuple[Any, int]]
    source: str  # kept for debugging and for the tests


class _Schema:
    """Named-type resolution and kinds, shared by the Python generator and the native program."""

    def __init__(self, classes: dict[str, type]) -> None:
        self.classes = classes
        self.named: dict[str, dict[str, Any]] = {}

    def resolve(self, t: Any) -> Any:
        if isinstance(t, str) and t in self.named:
            return self.named[t]
        if isinstance(t, str) and "." in t and t.rsplit(".", 1)[-1] in self.named:
            return self.named[t.rsplit(".", 1)[-1]]
        if isinstance(t, dict) and t.get("type") in ("record", "enum") and t["name"] not in self.named:
            self.named[t["name"]] = t
        return t

    @staticmethod
    def kind(t: Any) -> str:
        if isinstance(t, list):
            return "union"
        if isinstance(t, str):
            return t
        if t.get("logicalType") == "timestamp-micros" and t["type"] == "long":
            return "timestamp-micros"
        if t["type"] == "string" and t.get("logicalType") == "uuid":
            return "uuid"
        if "logicalType" in t:
            raise ValueError(f"unsupported logical type {t['logicalType']}")
        return str(t["type"])

    @staticmethod
    def union_branches(t: list[Any]) -> tuple[int, Any]:
        """(index of null, the other branch) of a [null, T] union; other unions are refused."""
        if len(t) != 2 or "null" not in t:
            raise ValueError(f"only [null, T] unions are supported, got {t!r}")
        null_i = t.index("null")
        return null_i, t[1 - null_i]


class _Gen(_Schema):
    def __init__(self, classes: dict[str, type]) -> None:
        super().__init__(classes)
        self.done: set[str] = set()
        self.inlining: set[str] = set()
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {
            "_L": _Longs(64),
            "_I": _Longs(32),
            "_B": {True: b"\x01", False: b"\x00"},
            "_UL1": _Longs(64, b"\x02"),  # [null, T] union, branch 1, + length
            "_UL0": _Longs(64, b"\x00"),  # [T, null] union, branch 0, + length
            "_EPOCH": _EPOCH,
            "_US": _US,
            "_TD": timedelta,
            "_rl": _read_long,
            "_uuid": _uuid_bytes,
            "_alen": _array_len,
            "_Bad": CorruptBody,
            "_new": object.__new__,
            "_set": object.__setattr__,
            "_F": struct.Struct("<f"),
            "_D": struct.Struct("<d"),
        }
        self.n = 0

    def var(self, prefix: str = "x") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    # ---- encoders: a list of bytes expressions, concatenated in order
    def enc(self, t: Any, v: str, inline: bool = False) -> list[str]:
        """Parts for value expression ``v`` (evaluated exactly once); ``inline`` flattens a record."""
        t = self.resolve(t)
        k = self.kind(t)
        if k == "null":
            return []
        if k == "string":
            x = self.var()
            return [f"_L[len({x} := {v}.encode())]", x]
        if k == "bytes":
            x = self.var()
            return [f"_L[len({x} := {v})]", x]
        if k == "uuid":  # refused here: fastavro and Java readers would fail on a non-UUID string
            x = self.var()
            return [f"_L[len({x} := _uuid({v}))]", x]
        if k == "long":
            return [f"_L[{v}]"]
        if k == "int":
            return [f"_I[{v}]"]
        if k == "boolean":
            return [f"_B[{v}]"]
        if k in ("float", "double"):
            return [f"_{k[0].upper()}.pack({v})"]
        if k == "timestamp-micros":
            return [f"_L[({v} - _EPOCH) // _US]"]
        if k == "enum":
            table = self.var("_EN")
            self.ns[table] = {s: encode_long(i) for i, s in enumerate(t["symbols"])}
            return [f"{table}[{v}]"]
        if k == "record":
            if inline:
                return self.record_parts(t, v)
            return [f"{self.record(t)[0]}({v})"]
        if k in ("array", "map"):
            x, i = self.var(), self.var("i")
            if k == "array":
                item = " + ".join(self.enc(t["items"], i)) or 'b""'
                body = f"[{item} for {i} in {x}]"
            else:
                kk, kb = self.var("k"), self.var()
                item = " + ".join([f"_L[len({kb} := {kk}.encode())]", kb, *self.enc(t["values"], i)])
                body = f"[{item} for {kk}, {i} in {x}.items()]"
            # Size first, so None (or a str for an array) is refused instead of written as something else.
            c = self.var("c")
            size = f"_alen({x} := {v})" if k == "array" else f"len({x} := {v})"
            return [f'(_L[{c}] + b"".join({body}) + b"\\x00" if ({c} := {size}) else b"\\x00")']
        if k == "union":
            return [self.union_enc(t, v)]
        raise ValueError(f"unsupported Avro type {t!r}")

    def union_enc(self, t: list[Any], v: str) -> str:
        null_i, other = self.union_branches(t)
        other = self.resolve(other)
        x = self.var()
        if self.kind(other) in ("string", "bytes"):
            # One table lookup gives branch index and length prefix together.
            table = "_UL1" if null_i == 0 else "_UL0"
            y = self.var()
            src = f"{x}.encode()" if self.kind(other) == "string" else x
            return (
                f"({table}[len({y} := {src})] + {y} if ({x} := {v}) is not None else {encode_long(null_i)!r})"
            )
        branch = encode_long(1 - null_i)
        if self.kind(other) == "record":  # the branch byte goes in as the encoder's prefix
            return f"({self.record(other)[0]}({x}, {branch!r}) if ({x} := {v}) is not None else {encode_long(null_i)!r})"
        parts = " + ".join([repr(branch), *self.enc(other, x)])
        return f"(({parts}) if ({x} := {v}) is not None else {encode_long(null_i)!r})"

    def record_parts(self, t: dict[str, Any], v: str) -> list[str]:
        """A record's fields flattened into the caller's parts (saves a call and a join)."""
        r = self.var("r")
        parts: list[str] = []
        for i, f in enumerate(t["fields"]):
            expr = f"({r} := {v}).{f['name']}" if i == 0 else f"{r}.{f['name']}"
            parts += self.enc(f["type"], expr, inline=True)
        return parts

    # ---- decoders: statements that leave the value in `target`, advancing p
    def read_long(self, target: str, ind: str) -> list[str]:
        return [
            f"{ind}b = d[p]",
            f"{ind}if b < 128:",
            f"{ind}    p += 1",
            f"{ind}    {target} = (b >> 1) ^ -(b & 1)",
            f"{ind}else:",
            f"{ind}    {target}, p = _rl(d, p)",
        ]

    def read_sized(self, target: str, conv: str, ind: str) -> list[str]:
        """Length-prefixed bytes or string. A length past the end only yields a short slice:
        the next read raises IndexError or the caller sees p > n, so no check is needed here;
        a negative length would move p backwards and is refused."""
        return [
            f"{ind}b = d[p]",
            f"{ind}if b < 128:",
            f"{ind}    if b & 1:",
            f"{ind}        raise _Bad('negative length')",
            f"{ind}    e = p + 1 + (b >> 1)",
            f"{ind}    {target} = d[p + 1:e]{conv}",
            f"{ind}else:",
            f"{ind}    ln, p = _rl(d, p)",
            f"{ind}    if ln < 0:",
            f"{ind}        raise _Bad('negative length')",
            f"{ind}    e = p + ln",
            f"{ind}    {target} = d[p:e]{conv}",
            f"{ind}p = e",
        ]

    def dec(self, t: Any, target: str, ind: str) -> list[str]:
        t = self.resolve(t)
        k = self.kind(t)
        if k == "null":
            return [f"{ind}{target} = None"]
        if k in ("string", "uuid"):
            return self.read_sized(target, ".decode()", ind)
        if k == "bytes":
            return self.read_sized(target, "", ind)
        if k in ("long", "int"):
            out = self.read_long(target, ind)
            if k == "int":
                out += [
                    f"{ind}if not -2147483648 <= {target} < 2147483648:",
                    f"{ind}    raise _Bad('int overflow')",
                ]
            return out
        if k == "boolean":
            return [
                f"{ind}b = d[p]",
                f"{ind}p += 1",
                f"{ind}if b > 1:",
                f"{ind}    raise _Bad('boolean byte is not 0 or 1')",
                f"{ind}{target} = b == 1",
            ]
        if k in ("float", "double"):
            size, s = (4, "_F") if k == "float" else (8, "_D")
            return [f"{ind}{target}, = {s}.unpack_from(d, p)", f"{ind}p += {size}"]
        if k == "timestamp-micros":
            return [*self.read_long("ts", ind), f"{ind}{target} = _EPOCH + _TD(0, 0, ts)"]
        if k == "enum":
            table = self.var("_SY")
            self.ns[table] = tuple(t["symbols"])
            return [
                *self.read_long("ix", ind),
                f"{ind}if not 0 <= ix < {len(t['symbols'])}:",
                f"{ind}    raise _Bad('enum index out of range')",
                f"{ind}{target} = {table}[ix]",
            ]
        if k == "record":
            if t["name"] in self.inlining:  # recursive type: call instead of inlining forever
                return [f"{ind}{target}, p = {self.record(t)[1]}(d, p, n)"]
            return self.record_dec(t, target, ind)
        if k in ("array", "map"):
            acc, cnt, item = self.var("acc"), self.var("cnt"), self.var("it")
            out = [f"{ind}{acc} = {'[]' if k == 'array' else '{}'}", f"{ind}while True:"]
            i2 = ind + "    "
            out += self.read_long(cnt, i2)
            out += [f"{i2}if {cnt} == 0:", f"{i2}    break", f"{i2}if {cnt} < 0:", f"{i2}    {cnt} = -{cnt}"]
            out += self.read_long("_bs", i2 + "    ")  # block byte size: not needed
            out += [f"{i2}for _ in range({cnt}):"]
            i3 = i2 + "    "
            if k == "array":
                out += self.dec(t["items"], item, i3)
                out += [f"{i3}{acc}.append({item})"]
            else:
                key = self.var("key")
                out += self.dec("string", key, i3)
                out += self.dec(t["values"], item, i3)
                out += [f"{i3}{acc}[{key}] = {item}"]
            out += [f"{ind}{target} = {'tuple(' + acc + ')' if k == 'array' else acc}"]
            return out
        if k == "union":
            null_i, other = self.union_branches(t)
            # Branch 0 or 1 is one varint byte (0x00 or 0x02); any other byte is corrupt.
            out = [f"{ind}ui = d[p]", f"{ind}p += 1"]
            out += [
                f"{ind}if ui == {null_i * 2}:",
                f"{ind}    {target} = None",
                f"{ind}elif ui == {(1 - null_i) * 2}:",
            ]
            out += self.dec(other, target, ind + "    ")
            out += [f"{ind}else:", f"{ind}    raise _Bad('union branch index out of range')"]
            return out
        raise ValueError(f"unsupported Avro type {t!r}")

    def record(self, t: dict[str, Any]) -> tuple[str, str]:
        name = t["name"]
        enc_name, dec_name = f"_enc_{name}", f"_dec_{name}"
        if name in self.done:
            return enc_name, dec_name
        self.done.add(name)
        cls = self.classes[name]
        self.ns[f"_C_{name}"] = cls
        parts: list[str] = []
        for f in t["fields"]:
            parts += self.enc(f["type"], f"o.{f['name']}", inline=True)
        enc = [f'def {enc_name}(o, pre=b""):', f'    return b"".join((pre, {", ".join(parts)}))']
        dec = [f"def {dec_name}(d, p, n):", *self.record_dec(t, "o", "    "), "    return o, p"]
        self.lines += ["", *enc, "", *dec]
        return enc_name, dec_name

    def record_dec(self, t: dict[str, Any], target: str, ind: str) -> list[str]:
        """A record's field decoders inlined into the caller, then the dataclass built."""
        name = t["name"]
        self.ns[f"_C_{name}"] = self.classes[name]
        self.inlining.add(name)
        out: list[str] = []
        names = [self.var("f") for _ in t["fields"]]
        for f, var in zip(t["fields"], names, strict=True):
            out += self.dec(f["type"], var, ind)
        self.inlining.discard(name)
        items = ", ".join(f"{f['name']!r}: {var}" for f, var in zip(t["fields"], names, strict=True))
        # Frozen dataclass __init__ sets each field through object.__setattr__; setting the
        # instance dict in one go is faster and yields an equal object (there is no __post_init__).
        return [*out, f"{ind}{target} = _new(_C_{name})", f"{ind}_set({target}, '__dict__', {{{items}}})"]


def compile_record(schema: dict[str, Any], classes: dict[str, type]) -> CodecFunctions:
    """Generate the encoder and decoder of a top-level record schema (and its nested records)."""
    gen = _Gen(classes)
    gen.resolve(schema)
    enc_name, dec_name = gen.record(schema)
    source = "\n".join(gen.lines) + "\n"
    ns = gen.ns
    # The source is generated from our own avsc files (never from received data), so exec is
    # the point: straight-line code per schema is what makes the codec fast.
    exec(compile(source, f"<avro codec {schema['name']}>", "exec"), ns)  # noqa: S102
    return CodecFunctions(encode=ns[enc_name], decode=ns[dec_name], source=source)


# ---- the native codec (schemas/_cavro.c): same bytes, same objects, ~5x faster

_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_LOGICAL = ("uuid", "timestamp-micros")


class _Program(_Schema):
    """A schema as the nested tuples ``_cavro.Codec`` walks (format in the C file's header)."""

    def node(self, t: Any, records: tuple[str, ...] = ()) -> tuple[Any, ...]:
        t = self.resolve(t)
        k = self.kind(t)
        if k in _PRIMITIVES or k in _LOGICAL:
            return (k,)
        if k == "enum":
            return ("enum", tuple(t["symbols"]))
        if k == "array":
            return ("array", self.node(t["items"], records))
        if k == "map":
            return ("map", self.node(t["values"], records))
        if k == "union":
            null_i, other = self.union_branches(t)
            return ("union", null_i, self.node(other, records))
        if k == "record":
            name = t["name"]
            if name in records:  # tuples cannot point back at themselves
                raise ValueError(f"recursive record {name} is not supported by the native codec")
            fields = tuple((f["name"], self.node(f["type"], (*records, name))) for f in t["fields"])
            return ("record", name, self.classes[name], fields)
        raise ValueError(f"unsupported Avro type {t!r}")


def native_program(schema: dict[str, Any], classes: dict[str, type]) -> tuple[Any, ...]:
    """The program of a top-level record schema for ``_cavro.Codec``."""
    return _Program(classes).node(schema)


_cavro: ModuleType | None
try:
    from schemas import _cavro
except ImportError as exc:  # not built (e.g. a source checkout without build_ext): the Python path
    _cavro = None
    NATIVE_UNAVAILABLE = f"schemas._cavro did not import: {exc}"
else:
    NATIVE_UNAVAILABLE = ""

BACKEND_ENV = "QUERYTRAIL_CODEC"


def codec_backend() -> str:
    """``native`` when the C extension imported, else ``python``; ``QUERYTRAIL_CODEC=python`` forces
    the generated-Python path (tests compare both), ``QUERYTRAIL_CODEC=native`` insists on C."""
    wanted = os.environ.get(BACKEND_ENV, "").strip().lower()
    if wanted not in ("", "python", "native"):
        raise ValueError(f"{BACKEND_ENV}={wanted!r}: expected python or native")
    if wanted == "python":
        return "python"
    if _cavro is None and wanted == "native":
        raise ImportError(f"{BACKEND_ENV}=native but {NATIVE_UNAVAILABLE}")
    return "native" if _cavro is not None else "python"


def compile_native(schema: dict[str, Any], classes: dict[str, type]) -> CodecFunctions:
    """The C encoder and decoder of a top-level record schema (ImportError if it is not built)."""
    if _cavro is None:
        raise ImportError(NATIVE_UNAVAILABLE)
    program = native_program(schema, classes)
    codec = _cavro.Codec(program, CorruptBody)
    return CodecFunctions(encode=codec.encode, decode=codec.decode, source=repr(program))


def compile_codec(schema: dict[str, Any], classes: dict[str, type], backend: str) -> CodecFunctions:
    """``compile_native`` or ``compile_record``, by ``backend`` (see ``codec_backend``)."""
    if backend == "native":
        return compile_native(schema, classes)
    return compile_record(schema, classes)
