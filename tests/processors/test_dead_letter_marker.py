"""The worker's mark for bytes it dead-lettered: a ``seen`` key no request id can equal, in the
record's own partition of the table's changelog."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from processors.worker.reconcile import dead_letter_marker


@given(
    partitions=st.integers(1, 64),
    data=st.data(),
    offset=st.integers(0, 2**40),
    request_id=st.text(max_size=40),
)
def test_marker_lands_in_the_records_partition_and_is_never_a_request_id(
    partitions: int, data: st.DataObject, offset: int, request_id: str
) -> None:
    partition = data.draw(st.integers(0, partitions - 1))
    key = dead_letter_marker("qt.requests", partition, offset, partitions)
    everything = list(range(partitions))
    assert DefaultPartitioner()(key, everything, everything) == partition  # as faust's producer
    assert key != request_id.encode()  # 0xFF never occurs in UTF-8
    assert key == dead_letter_marker("qt.requests", partition, offset, partitions)  # found again
    assert key != dead_letter_marker("qt.requests", partition, offset + 1, partitions)
