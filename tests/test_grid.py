"""PromptGrid: Flower's send-and-receive semantics, polling at its own interval."""

from types import SimpleNamespace

from mefl_app.grid import PromptGrid


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
    replies = PromptGrid(inner, interval=0.001).send_and_receive(["a", "b", "c"])
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert inner.pulls == 3


def test_timeout_returns_the_replies_that_came():
    inner = ScriptedGrid([1, None])
    replies = PromptGrid(inner, interval=0.001).send_and_receive(["a", "b"], timeout=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert inner.pulls > 1


def test_other_calls_reach_flowers_grid():
    inner = ScriptedGrid([])
    assert PromptGrid(inner, interval=1.0).run == "the run"
