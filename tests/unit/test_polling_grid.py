"""PollingGrid: Flower's send-and-receive semantics, polling at its own interval, with progress lines."""

from types import SimpleNamespace

from mefl_app.server import polling_grid
from mefl_app.server.polling_grid import PollingGrid, progress_line


def messages(count: int, phase: str = "train") -> list:
    return [SimpleNamespace(metadata=SimpleNamespace(message_type=phase)) for _ in range(count)]


class ScriptedGrid:
    """Replies to message i become available at pull number ``ready_at[i]``."""

    def __init__(self, ready_at: list[int | None]) -> None:
        self.ready_at, self.pulls, self.delivered = ready_at, 0, set()
        self.run = "the run"

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        out = []
        for mid in sorted(message_ids):
            i = int(mid[1:])
            if self.ready_at[i] is not None and self.pulls >= self.ready_at[i] and mid not in self.delivered:
                self.delivered.add(mid)
                out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid)))
        return out


def test_collects_every_reply_and_stops_pulling_when_all_are_in():
    inner = ScriptedGrid([1, 3, 2])
    replies = PollingGrid(inner, interval=0.001).send_and_receive(messages(3))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert inner.pulls == 3


def test_timeout_returns_the_replies_that_came():
    inner = ScriptedGrid([1, None])
    replies = PollingGrid(inner, interval=0.001).send_and_receive(messages(2), timeout=0.5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert inner.pulls > 1


def test_other_calls_reach_flowers_grid():
    inner = ScriptedGrid([])
    assert PollingGrid(inner, interval=1.0).run == "the run"


def test_progress_line_says_how_many_replies_came_and_when_the_rest_will():
    assert progress_line("train", 12, 24, 41.0) == "train 12/24 replies, 41 s, ETA 41 s"
    assert progress_line("evaluate", 0, 24, 5.2) == "evaluate 0/24 replies, 5 s"


def test_a_long_wait_logs_progress_lines(monkeypatch):
    logged = []
    monkeypatch.setattr(polling_grid, "log", lambda level, fmt, *args: logged.append(fmt % args))
    inner = ScriptedGrid([1, 3])  # the second reply comes at the third pull: two waits in between
    PollingGrid(inner, interval=0.001, progress_seconds=0.0).send_and_receive(messages(2, "evaluate"))
    assert len(logged) == 2 and all(line.startswith("[mefl] evaluate 1/2 replies, ") for line in logged)
