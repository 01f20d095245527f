"""The base image's package sources: the machine's own apt sources, one-line and deb822."""

from __future__ import annotations

from tests.compose.images import apt_sources

DEB822 = """Types: deb
# http://snapshot.example/archive
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
"""


def test_deb822_and_one_line_sources_of_the_suite_become_deb_lines(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list").write_text(
        "deb http://one.example/debian bookworm main  # a comment\n"
        "deb-src http://one.example/debian bookworm main\n"
        "deb http://one.example/debian trixie main\n"
        "deb [arch=amd64] http://options.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text("deb http://x bookworm main")
    assert apt_sources("bookworm", tmp_path) == [
        "deb http://one.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm main contrib",
        "deb http://mirror.example/debian bookworm-updates main contrib",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_no_sources_is_no_lines(tmp_path):
    assert apt_sources("bookworm", tmp_path) == []
