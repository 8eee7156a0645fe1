"""Copies of Flower messages with other arrays: what the server-side wrappers hand on."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, RecordDict


def with_arrays(message: Message, arrays: ArrayRecord) -> Message:
    """``message`` with its ArrayRecord replaced by ``arrays``; the other records, the type, the
    addressing (sender included, which a reply's aggregation reads) and the group are kept."""
    content = RecordDict(
        {key: arrays if isinstance(record, ArrayRecord) else record for key, record in message.content.items()}
    )
    copy = Message(
        content,
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
        group_id=message.metadata.group_id,
    )
    copy.metadata.__dict__["_src_node_id"] = message.metadata.src_node_id
    return copy
