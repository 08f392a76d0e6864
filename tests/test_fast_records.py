"""worker.kafka.fast_records against kafka-python's own record parsing, on the same bytes.

No broker: the record batches are built by kafka-python's builders (every message format,
gzip, keys, null values, headers, multi-byte varints, control batches, corrupt bytes), and
both parsers read them through ``Fetcher.PartitionRecords``.  The Kafka integration tests
(tests/test_worker_*.py) run the worker's consumer with it installed.
"""

from __future__ import annotations

import struct

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from worker.kafka.fast_records import install, offsets_of, partition_records_class

TP = TopicPartition("t", 3)


def batches(magic=2, compression=0, n=60, per=25, base=0, headers=False, big=False) -> bytes:
    """``n`` records in batches of ``per`` from offset ``base``."""
    out = bytearray()
    for start in range(base, base + n, per):
        b = MemoryRecordsBuilder(magic=magic, compression_type=compression, batch_size=1 << 22, offset=start)
        for i in range(start, min(start + per, base + n)):
            value = None if i % 11 == 4 else (b"x" * (300 if big else 1) + b"%d" % i * (i % 5))
            key = None if i % 3 == 0 else b"sensor-%05d" % i
            hdrs = [("trace", b"t%d" % i), ("empty", None)] if headers and i % 2 else []
            b.append(1_795_000_000_000 + 977 * i, key, value, hdrs if magic == 2 else None)
        b.close()
        out += b.buffer()
    return bytes(out)


def parse_both(raw: bytes, fetch_offset: int, takes=(7, 1, 1000, 1000)):
    """Values and offsets by kafka-python's PartitionRecords and by the columnar one, taken in the
    same steps; and the next fetch offset each ends at."""
    want = Fetcher.PartitionRecords(fetch_offset, TP, MemoryRecords(raw))
    out: dict = {}
    got = partition_records_class(Fetcher.PartitionRecords, out)(fetch_offset, TP, MemoryRecords(raw))
    w_vals, w_offs, g_vals = [], [], []
    for n in takes:
        if want:
            recs = want.take(n)
            w_vals += [r.value for r in recs]
            w_offs += [r.offset for r in recs]
        if got:
            g_vals += got.take(n)
    return (w_vals, w_offs, want.next_fetch_offset), (g_vals, out.get(TP, []), got.next_fetch_offset)


@pytest.mark.parametrize("magic", [0, 1, 2])
@pytest.mark.parametrize("compression", [0, 1])  # none, gzip (the codecs installed here)
def test_same_values_and_offsets_as_kafka_python(magic, compression):
    raw = batches(magic, compression, headers=True)
    want, got = parse_both(raw, 0)
    assert len(want[0]) == 60
    assert got == want


@pytest.mark.parametrize("fetch_offset", [0, 1, 24, 25, 26, 59])
def test_a_fetch_offset_inside_a_batch_skips_what_is_before_it(fetch_offset):
    want, got = parse_both(batches(base=0, big=True), fetch_offset)
    assert got == want
    assert got[1][0] == fetch_offset


def test_multi_byte_varints_headers_and_partial_takes():
    raw = batches(n=300, per=120, headers=True, big=True)  # lengths > 63 bytes: two-byte varints
    for takes in [(1,) * 400, (119, 1, 1, 500), (1000,)]:
        want, got = parse_both(raw, 5, takes)
        assert got == want


def test_control_batches_are_skipped_as_kafka_python_does():
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=7, producer_epoch=0,
                                  base_sequence=0, batch_size=1 << 20)
    b.append(0, timestamp=1, key=b"\x00\x00\x00\x01", value=b"\x00\x00\x00\x00\x00\x00", headers=[])
    buf = b.build()
    attrs = struct.unpack_from(">h", buf, 21)[0] | 0x20  # the control bit, then the CRC again
    struct.pack_into(">h", buf, 21, attrs)
    struct.pack_into(">q", buf, 0, 60)
    from kafka.record.util import calc_crc32c

    struct.pack_into(">I", buf, 17, calc_crc32c(memoryview(buf)[21:]))
    raw = batches() + bytes(buf) + batches(base=61, n=5)
    want, got = parse_both(raw, 0)
    assert got == want
    assert 60 not in got[1] and got[2] == 66


def test_corrupt_bytes_raise_as_kafka_python():
    raw = bytearray(batches())
    raw[200] ^= 0xFF  # CRC check fails
    for parse in (lambda r: Fetcher.PartitionRecords(0, TP, MemoryRecords(bytes(r))).take(100),
                  lambda r: partition_records_class(Fetcher.PartitionRecords, {})(0, TP, MemoryRecords(bytes(r))).take(100)):
        with pytest.raises(CorruptRecordError):
            parse(raw)


def test_bad_record_length_raises_corrupt_record_error_without_crc_check():
    raw = bytearray(batches(n=3, per=3))
    raw[61] = 0x7E  # the first record's length varint: 63, longer than the record
    with pytest.raises(CorruptRecordError):
        partition_records_class(Fetcher.PartitionRecords, {})(0, TP, MemoryRecords(bytes(raw)), check_crcs=False).take(10)


def test_an_error_after_some_records_comes_with_the_next_take():
    raw = bytearray(batches(n=50, per=25))
    raw[-100] ^= 0xFF  # the second batch is corrupt
    out: dict = {}
    pr = partition_records_class(Fetcher.PartitionRecords, out)(0, TP, MemoryRecords(bytes(raw)))
    assert len(pr.take(100)) == 25 and out[TP] == list(range(25))
    with pytest.raises(CorruptRecordError):
        pr.take(100)


def test_deserializers_and_read_committed_keep_kafka_pythons_records():
    from kafka.serializer import Deserializer

    class Upper(Deserializer):
        def deserialize(self, topic, headers, data):
            return data and data.upper()

    raw = batches(headers=True)
    out: dict = {}
    cls = partition_records_class(Fetcher.PartitionRecords, out)
    pr = cls(0, TP, MemoryRecords(raw), value_deserializer=Upper())
    vals = pr.take(1000)
    want = Fetcher.PartitionRecords(0, TP, MemoryRecords(raw), value_deserializer=Upper()).take(1000)
    assert vals[1] == b"X1" and vals[1] == want[1].value
    assert vals == [r.value for r in want] and out[TP] == [r.offset for r in want]
    from kafka.consumer.fetcher import IsolationLevel

    out.clear()
    pr = cls(0, TP, MemoryRecords(raw), isolation_level=IsolationLevel.READ_COMMITTED)
    assert len(pr.take(1000)) == 60 and out[TP] == list(range(60))


def test_install_takes_over_a_consumer_and_says_so():
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(2, 5))  # no broker needed to build it
    try:
        assert offsets_of(c) is None
        assert install(c)
        assert offsets_of(c) == {}
        assert c._fetcher.PartitionRecords.__name__ == "ColumnarPartitionRecords"
        assert Fetcher.PartitionRecords.__name__ == "PartitionRecords"  # other consumers keep kafka-python's
    finally:
        c.close()
