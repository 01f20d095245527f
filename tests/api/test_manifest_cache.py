"""The manifest cache: same result as a whole-file parse, reusing what did not change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clrk.api.loader import ManifestCache, load_paths, parse_yaml, split_documents

GW = """apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressGateway
metadata: {name: gw}
spec:
  listeners: [{name: tcp, protocol: TCP}]
"""


def route(name: str) -> str:
    return f"""apiVersion: clrk.apoxy.dev/v1alpha1
kind: EgressL4Route
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{destinationHostnames: [{name}.example.com]}}]}}]
"""


def test_appending_a_route_keeps_every_other_resource_object(tmp_path):
    path = tmp_path / "m.yaml"
    text = GW + "".join("---\n" + route(f"r{i}") for i in range(20))
    path.write_text(text)
    cache = ManifestCache()
    first = load_paths([tmp_path], cache)
    path.write_text(text + "---\n" + route("new"))
    second = load_paths([tmp_path], cache)
    assert len(second.resources) == len(first.resources) + 1
    assert all(a is b for a, b in zip(first.resources, second.resources, strict=False))
    assert first.digest != second.digest


def test_an_unchanged_set_has_the_same_digest_and_objects(tmp_path):
    (tmp_path / "m.yaml").write_text(GW)
    cache = ManifestCache()
    a, b = load_paths([tmp_path], cache), load_paths([tmp_path], cache)
    assert a.digest == b.digest and a.resources[0] is b.resources[0]


def test_a_broken_document_reports_whole_file_line_numbers(tmp_path):
    (tmp_path / "m.yaml").write_text(GW + "---\n" + route("a") + "---\nkind: [unclosed\n")
    (finding,) = load_paths([tmp_path]).errors
    assert finding.document == 3 and "line 15" in finding.message  # not the piece's line 2


pieces = st.lists(
    st.sampled_from([
        "---\n", "--- \n", "...\n", "# comment\n", "a: 1\n", "b: [1, 2]\n", "c: |\n  ---x\n",
        "- x\n", "---\nd: 2\n", "--- e\n", "f: '---'\n", "\n",
    ]),
    max_size=12,
)  # fmt: skip


@given(pieces)
def test_pieces_parse_to_the_documents_of_the_whole_stream(parts):
    text = "".join(parts)
    whole, problems = parse_yaml(text, "f.yaml")
    cache = ManifestCache()
    entry = cache.file("f.yaml", text)
    if problems:
        assert entry.problems == problems
    else:
        assert [(src, data) for src, data, _r, _p in entry.checked] == whole
    assert "".join(split_documents(text)) == text
