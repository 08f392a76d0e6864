"""kafka-python's fetched records as two lists, without an object per record (issue 11).

kafka-python parses a fetch answer record by record in Python: a ``DefaultRecord`` and a
``ConsumerRecord`` of 13 fields each, seven ``decode_varint`` calls, two deserializer calls
and a generator step per record, and the worker then copied values and offsets out of them
again.  That was about a quarter of the worker's CPU time (py-spy, README "Benchmarks").

:func:`install` gives one consumer a ``PartitionRecords`` (the fetcher's per-partition record
queue) that parses a whole record batch at once with the varints decoded inline, and whose
``take(n)`` returns the values only; their offsets go to a side list per partition that
:meth:`worker.kafka.source.Source.poll` takes with them.  Everything else stays kafka-python's:
fetch requests, positions, pause/resume, seeks, rebalances, errors, CRC checks
(``check_crcs``, C-speed with the ``crc32c`` package).  Batches the inline parser does not
handle (message format v0/v1, read_committed consumers, configured deserializers) go through
kafka-python's own parsing, record for record as before.

:func:`install` proves the parser on a batch built by kafka-python before it takes over,
and leaves the consumer as it is (returns False) when anything differs: a kafka-python
whose internals moved keeps working, only slower.
"""

from __future__ import annotations

import logging
import struct

log = logging.getLogger("slotwatch.kafka")

_HEADER = struct.Struct(">qiibIhiqqqhii")  # a v2 record batch's header (kafka.record.default_records)


def parse_v2(buf: bytes, pos: int, count: int, base_offset: int, values: list, offsets: list) -> int:
    """Append the values and offsets of ``count`` v2 records starting at ``buf[pos]``; return the end.

    Record: length, attributes, timestamp delta, offset delta (varints), key, value
    (varint length, -1 = null), headers (count, then key/value pairs), zig-zag varints.
    Raises ``ValueError`` on a malformed record (its length does not match what it holds).

    >>> from kafka.record.util import encode_varint
    >>> rec = bytearray([0, 0, 2]); _ = encode_varint(-1, rec.append); _ = encode_varint(2, rec.append); rec += b"hi"; rec.append(0)
    >>> buf = bytearray(); _ = encode_varint(len(rec), buf.append); buf += rec
    >>> vals, offs = [], []
    >>> parse_v2(bytes(buf), 0, 1, 10, vals, offs) == len(buf), vals, offs
    (True, [b'hi'], [11])
    """
    from kafka.record.util import decode_varint as dv

    vapp, oapp = values.append, offsets.append
    for _ in range(count):
        b = buf[pos]
        if b < 0x80:  # one-byte varints, the common case, inline
            ln = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            ln, pos = dv(buf, pos)
        end = pos + ln
        pos += 1  # attributes (int8, unused)
        b = buf[pos]  # timestamp delta: skipped
        if b < 0x80:
            pos += 1
        else:
            _, pos = dv(buf, pos)
        b = buf[pos]
        if b < 0x80:
            od = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            od, pos = dv(buf, pos)
        b = buf[pos]
        if b < 0x80:
            kl = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            kl, pos = dv(buf, pos)
        if kl > 0:
            pos += kl
        b = buf[pos]
        if b < 0x80:
            vl = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            vl, pos = dv(buf, pos)
        if vl >= 0:
            vapp(buf[pos:pos + vl])
            pos += vl
        else:
            vapp(None)
        oapp(base_offset + od)
        if buf[pos]:  # headers: skipped (the worker does not read them)
            nh, pos = dv(buf, pos)
            if nh < 0:
                raise ValueError(f"invalid number of record headers {nh}")
            for _h in range(nh):
                hk, pos = dv(buf, pos)
                if hk < 0:
                    raise ValueError(f"invalid negative header key size {hk}")
                pos += hk
                hv, pos = dv(buf, pos)
                if hv > 0:
                    pos += hv
        else:
            pos += 1
        if pos != end or ln < 0:
            raise ValueError(f"record at offset {base_offset + od}: length {ln}, read {ln + pos - end}")
    return pos


def partition_records_class(base, offsets_out: dict):
    """A subclass of kafka-python's ``Fetcher.PartitionRecords`` (``base``) whose ``take`` returns
    values and appends their offsets to ``offsets_out[tp]``."""
    import kafka.errors as errors
    from kafka.consumer.fetcher import IsolationLevel

    class ColumnarPartitionRecords(base):
        def __init__(self, fetch_offset, tp, records, key_deserializer=None, value_deserializer=None, check_crcs=True,
                     isolation_level=IsolationLevel.READ_UNCOMMITTED, **kw):
            super().__init__(fetch_offset, tp, records, key_deserializer=key_deserializer,
                             value_deserializer=value_deserializer, check_crcs=check_crcs,
                             isolation_level=isolation_level, **kw)
            plain = (key_deserializer is None and value_deserializer is None
                     and isolation_level == IsolationLevel.READ_UNCOMMITTED)
            # batches of (values, offsets) lists; kafka-python's own records for what the inline parser skips
            self.record_iterator = self._batches(records) if plain else self._one_by_one(self.record_iterator)
            self._vals, self._offs, self._at = [], [], 0

        @staticmethod
        def _one_by_one(records):
            for rec in records:
                yield [rec.value], [rec.offset]

        def _batches(self, records):
            """kafka-python's ``_unpack_records`` for read_uncommitted, a batch at a time."""
            tp, last = self.topic_partition, None
            batch = records.next_batch()
            while batch is not None:
                last = batch
                if self.check_crcs and not batch.validate_crc():
                    raise errors.CorruptRecordError(f"Record batch for partition {tp} at offset {batch.base_offset} failed crc check")
                vals, offs = [], []
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if batch.is_control_batch:
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                    batch._maybe_uncompress()
                    buf = bytes(batch._buffer)
                    try:
                        end = parse_v2(buf, batch._pos, batch.records_count, batch.base_offset, vals, offs)
                    except (ValueError, IndexError) as e:
                        raise errors.CorruptRecordError(f"Found invalid record structure: {e!r}") from None
                    if end != len(buf):
                        raise errors.CorruptRecordError(f"{len(buf) - end} unconsumed bytes after all records consumed")
                    self.bytes_read += len(buf) - batch._pos
                else:  # message format v0/v1: kafka-python's records
                    for rec in batch:
                        if self.check_crcs and not rec.validate_crc():
                            raise errors.CorruptRecordError(f"Record for partition {tp} at offset {rec.offset} failed crc check")
                        vals.append(rec.value)
                        offs.append(rec.offset)
                if offs and offs[0] < self.fetch_offset:  # a batch that starts before the fetch offset
                    k = next((i for i, o in enumerate(offs) if o >= self.fetch_offset), len(offs))
                    vals, offs = vals[k:], offs[k:]
                self.records_read += len(offs)
                if offs:
                    yield vals, offs
                batch = records.next_batch()
            if last is not None and last.magic == 2:
                self.next_fetch_offset = last.next_offset
            self.drain()

        def take(self, n=None):
            self._maybe_raise_next_inline_exception()
            values, offsets = [], []
            want = float("inf") if n is None else n
            try:
                while len(offsets) < want and self.record_iterator is not None:
                    if self._at >= len(self._offs):
                        self._vals, self._offs, self._at = [], [], 0
                        nxt = next(self.record_iterator, None)  # may drain (iterator None) at the end
                        if nxt is None:
                            break
                        self._vals, self._offs = nxt
                    k = self._at
                    j = min(len(self._offs), k + int(min(want - len(offsets), len(self._offs))))
                    values.extend(self._vals[k:j])
                    offsets.extend(self._offs[k:j])
                    self._at = j
                    self.next_fetch_offset = self._offs[j - 1] + 1
            except Exception as e:  # noqa: BLE001 - as kafka-python: raised now if nothing was taken, else next time
                if not offsets:
                    raise
                self._next_inline_exception = e
            if offsets:
                offsets_out.setdefault(self.topic_partition, []).extend(offsets)
            return values

    return ColumnarPartitionRecords


def install(consumer) -> bool:
    """Give ``consumer`` (a ``KafkaConsumer``) the columnar record queue; True when it took over.

    Afterwards ``consumer.poll()`` answers ``{TopicPartition: [value, ...]}`` and the offsets
    of those values are in :func:`offsets_of` ``(consumer)``, in the same order."""
    try:
        fetcher = consumer._fetcher
        base = type(fetcher).PartitionRecords
        out: dict = {}
        cls = partition_records_class(base, out)
        if not _self_test(base, cls, out):
            log.warning("kafka-python %s parses records differently than expected: its own record parsing is kept",
                        _version())
            return False
    except Exception as e:  # noqa: BLE001 - internals moved: keep kafka-python's path
        log.warning("columnar record parsing not available with kafka-python %s (%s): its own parsing is kept", _version(), e)
        return False
    fetcher.PartitionRecords = cls  # the instance attribute wins over the class's (Fetcher._parse_fetched_data)
    consumer._slotwatch_offsets = out
    return True


def offsets_of(consumer) -> dict | None:
    """The offsets side list of an :func:`install`-ed consumer (None: not installed)."""
    return getattr(consumer, "_slotwatch_offsets", None)


def _version() -> str:
    import kafka

    return getattr(kafka, "__version__", "?")


def _self_test(base, cls, out: dict) -> bool:
    """Both parsers on a batch built by kafka-python (keys, a null value, headers, a multi-byte
    varint, a fetch offset inside the batch): same values and offsets, same next fetch offset."""
    from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
    from kafka.structs import TopicPartition

    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=100)
    for i in range(40):
        b.append(1_700_000_000_000 + 1000 * i, b"k%d" % i if i % 3 else None, None if i == 7 else b"v" * (i * 9),
                 [("h", b"x")] if i == 5 else [])
    b.close()
    raw = bytes(b.buffer())
    tp = TopicPartition("selftest", 0)
    want = base(102, tp, MemoryRecords(raw)).take(1000)
    got = cls(102, tp, MemoryRecords(raw))
    first = got.take(30)
    rest = got.take(1000)
    offs = out.pop(tp, [])
    out.clear()
    return (first + rest == [r.value for r in want] and offs == [r.offset for r in want]
            and got.next_fetch_offset == 140 and not got)
