"""The event vocabulary: Avro schemas (``avsc/``, the source of truth) and the codec.

This package imports nothing else of querytrail's.
"""
