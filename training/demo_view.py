"""What ``slotwatch demo`` shows: the episodes read back from the anomalies topic and the
status line of the running worker (its /metrics)."""

from __future__ import annotations

import json
import time


class EpisodeTail:
    """Episodes from the anomalies topic (no consumer group: assign + seek): open and closed counts
    and the most recent ones (an episode's close message replaces its open message in the list)."""

    def __init__(self, settings, keep: int = 8) -> None:
        from kafka import TopicPartition

        from worker.kafka.clients import make_consumer

        k = settings.kafka
        self.consumer = make_consumer(k, group_id=None, enable_auto_commit=False, auto_offset_reset="latest")
        parts = self.consumer.partitions_for_topic(k.anomalies_topic) or {0}
        self.consumer.assign([TopicPartition(k.anomalies_topic, p) for p in parts])
        self.keep = keep
        self.recent: dict[str, dict] = {}  # episode_id -> its latest message, newest last
        self.open: set[str] = set()
        self.opened = 0
        self.closed = 0

    def poll(self) -> None:
        for recs in self.consumer.poll(timeout_ms=50, max_records=500).values():
            for r in recs:
                try:
                    self.add(json.loads(r.value))
                except (ValueError, TypeError, KeyError):
                    pass

    def add(self, msg: dict) -> None:
        if msg.get("type") != "episode":
            return  # a per-reading anomaly message (SLOTWATCH_EPISODES__PUBLISH_READINGS)
        eid = msg["episode_id"]
        if msg["event"] == "open":
            self.opened += 1
            self.open.add(eid)
        elif eid in self.open or eid not in self.recent:
            self.closed += 1
            self.open.discard(eid)
        self.recent.pop(eid, None)
        self.recent[eid] = msg
        while len(self.recent) > self.keep:
            self.recent.pop(next(iter(self.recent)))

    def rows(self) -> list[str]:
        out = []
        for m in reversed(list(self.recent.values())):
            feats = m.get("features") or [{}]
            top = feats[0]
            what = f"{top.get('feature', '?')} {top.get('actual', 0):.4g} vs {top.get('expected', 0):.4g} (z {top.get('z', 0):+.1f})" if top else ""
            if m["event"] == "open":
                state, peak, surp = "open", m.get("score", 0), m.get("surprise", 0)
            else:
                state = f"closed: {m.get('close_reason')}, {m.get('readings_flagged', 0)} flagged, {m.get('duration_s', 0):.0f} s"
                peak, surp = m.get("peak_score", 0), m.get("peak_surprise", 0)
            out.append(f"  {m.get('sensor_id', '?'):<12} {m.get('start_ts', '?'):<25} {peak:.9f} {surp:5.1f}  {what:<34} {state}")
        return out

    def close(self) -> None:
        self.consumer.close()


def render(stats: dict, tail: EpisodeTail, metrics_url: str, started: float, plain: bool, streamer) -> str:
    up = time.monotonic() - started
    line = (f"[{up:5.0f}s] sent {streamer.sent:,}  consumed {stats.get('consumed', 0):,.0f}  "
            f"{stats.get('rate', 0):,.0f} readings/s  slots {stats.get('slots', 0):.0f}/{stats.get('capacity', 0):.0f}  "
            f"lag {stats.get('lag', 0):,.0f}  episodes {stats.get('episodes_open', 0):,.0f} open / "
            f"{stats.get('episodes_closed', 0):,.0f} closed  (readings flagged {stats.get('anomalies', 0):,.0f})  "
            f"dead letters {stats.get('rejected', 0):,.0f}  ready {'yes' if stats.get('ready') else 'no'}")
    if plain:
        return line
    rows = [line, "", f"metrics: {metrics_url}", "",
            f"recent episodes (seen here: {tail.opened} opened, {tail.closed} closed):",
            "  sensor       start (UTC)               peak score  surp.  top feature: actual vs expected    state"]
    rows += tail.rows()
    if not tail.recent:
        rows.append("  (none yet: sensors warm up first)")
    rows.append("")
    rows.append("Ctrl-C stops everything.")
    return "\033[H\033[2J" + "\n".join(rows)


# ------------------------------------------------------------------ main
