"""Types of the C extension built from schemas/_cavro.c."""

from typing import Any

class Codec:
    """Encoder and decoder of one record schema, from a program made by ``_avro.native_program``."""

    def __init__(self, program: tuple[Any, ...], corrupt_body: type[Exception]) -> None: ...
    def encode(self, event: Any, prefix: bytes = ..., /) -> bytes: ...
    def decode(self, data: bytes, offset: int, n: int, /) -> tuple[Any, int]: ...
