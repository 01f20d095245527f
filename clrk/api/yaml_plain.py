"""Plain YAML documents built straight from the parser's nodes, or None.

PyYAML's constructor is general: each node goes through tag dispatch and generators
that fill mappings and sequences in a second pass (so that aliases can make cycles),
and the strict loader adds its alias and duplicate-key checks on top: most of a cold
load of 10,000 documents.  Policy documents are nearly always plain: mappings with
string keys, sequences, and str, int, float, bool and null scalars, no alias, merge
key or other tag.  `documents` builds those in one walk and gives up on anything else
(None): the caller then loads the text the general way, which alone decides what any
other document becomes, or which error it is.  Both ways give equal documents.
"""

from __future__ import annotations

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# The safe constructors of these tags turn a scalar into a value and nothing else.
_SCALARS = {
    tag: SafeConstructor.yaml_constructors[tag]
    for tag in (
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
    )
}


class _NotPlain(Exception):
    pass


def documents(text: str, loader_class: type) -> list[object] | None:
    """Every document of `text` (None for an empty one), if all are plain; else None.
    `loader_class` parses and resolves tags (the strict loader: same nodes)."""
    loader = None
    try:
        # Inside the try: libyaml's loader encodes the text at once, and text it cannot
        # encode (a lone surrogate) is for the general loader to report.
        loader = loader_class(text)
        out = []
        while loader.check_node():
            out.append(_build(loader, loader.get_node(), set()))
        return out
    except Exception:  # not plain, or invalid: the general loader decides what it is
        return None
    finally:
        if loader is not None:
            loader.dispose()


def _build(loader: object, node: object, seen: set[int]) -> object:
    # A node reached twice is an alias, which the strict loader refuses.
    if id(node) in seen:
        raise _NotPlain
    seen.add(id(node))
    kind = node.__class__
    tag = node.tag  # type: ignore[attr-defined]
    if kind is ScalarNode:
        if tag == _STR:
            return node.value  # type: ignore[attr-defined]
        construct = _SCALARS.get(tag)
        if construct is None:
            raise _NotPlain
        return construct(loader, node)
    if kind is SequenceNode and tag == _SEQ:
        return [_build(loader, item, seen) for item in node.value]  # type: ignore[attr-defined]
    if kind is MappingNode and tag == _MAP:
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:  # type: ignore[attr-defined]
            # Only string keys: merge keys (`<<`) and others take the general way.
            if key_node.__class__ is not ScalarNode or key_node.tag != _STR:
                raise _NotPlain
            key = key_node.value
            if key in mapping or id(key_node) in seen:  # a duplicate or an alias
                raise _NotPlain
            seen.add(id(key_node))
            if value_node.__class__ is ScalarNode and value_node.tag == _STR:
                if id(value_node) in seen:
                    raise _NotPlain
                seen.add(id(value_node))
                mapping[key] = value_node.value  # most values: as `_build` would, inline
            else:
                mapping[key] = _build(loader, value_node, seen)
        return mapping
    raise _NotPlain
