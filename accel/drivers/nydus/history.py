"""Config history of a Nydus image: the source's entries, kept consistent with the listed layers."""

from __future__ import annotations

from typing import Any

from accel.drivers.base import PlatformDraft

BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
CHUNK_DICT_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus chunk dictionary blob"}


def history_with_bootstrap(
    draft: PlatformDraft, positions: list[int | None]
) -> tuple[dict[str, Any], ...] | None:
    """History whose non-empty entries still match the layers: the source's, then the bootstrap's.

    `positions` are the manifest's blob layers as indexes into `draft.layers` (None: a dictionary blob).
    A source layer left out of the manifest keeps its entry, marked `empty_layer`; a dictionary blob gets
    an entry of its own where it is listed.
    """
    history = draft.history
    if history is None:
        source_history = draft.config.doc.get("history")
        if not source_history:
            return None  # no history to keep consistent
        history = tuple(source_history)
    bootstrap = dict(BOOTSTRAP_HISTORY)
    if positions == list(range(len(draft.layers))):
        return (*history, bootstrap)
    # Each source layer's entries: its own non-empty one and the empty ones just before it.
    groups: list[list[dict[str, Any]]] = [[]]
    for entry in history:
        groups[-1].append(dict(entry))
        if not entry.get("empty_layer"):
            groups.append([])
    *layer_groups, trailing = groups
    if len(layer_groups) != len(draft.layers):  # the source history does not match its layers anyway
        return (*history, bootstrap)

    def without_layer(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*group[:-1], group[-1] | {"empty_layer": True}]

    result: list[dict[str, Any]] = []
    emitted = 0
    for position in positions:
        if position is None:
            result.append(dict(CHUNK_DICT_HISTORY))
            continue
        result += [entry for group in layer_groups[emitted:position] for entry in without_layer(group)]
        result += layer_groups[position]
        emitted = position + 1
    result += [entry for group in layer_groups[emitted:] for entry in without_layer(group)]
    return (*result, *trailing, bootstrap)
