"""listen_backlog: somaxconn raised where allowed, and the dialer's listeners really
listening with it (read back with `ss`: a listener's Send-Q is its backlog)."""

from __future__ import annotations

import asyncio
import subprocess

from clrk_worker_dialer.config import DialerConfig
from clrk_worker_dialer.listen_backlog import listen_backlog
from clrk_worker_dialer.server import Dialer


def test_a_lower_somaxconn_and_syn_queue_are_raised_and_used(tmp_path):
    knob, syn = tmp_path / "somaxconn", tmp_path / "tcp_max_syn_backlog"
    knob.write_text("4096\n")
    syn.write_text("2048\n")
    assert listen_backlog(str(knob), syn_backlog=str(syn)) == 65535
    assert (knob.read_text(), syn.read_text()) == ("65535", "65535")


def test_where_it_may_not_raise_somaxconn_it_listens_with_what_is_there(tmp_path):
    knob = tmp_path / "somaxconn"
    knob.write_text("4096\n")
    assert listen_backlog(str(knob), raise_it=False) == 4096
    assert knob.read_text() == "4096\n"


def test_without_the_knob_it_asks_for_the_most_and_the_kernel_caps_it(tmp_path):
    absent = str(tmp_path / "absent")
    assert listen_backlog(absent, syn_backlog=absent) == 65535


def test_the_dialers_listeners_keep_its_backlog_not_asyncios_default_of_100():
    config = DialerConfig(manifests=[], gateway="default/gw", raise_somaxconn=False)
    dialer = Dialer(config, writer=object())
    dialer.backlog = 3000  # below any somaxconn, so the kernel keeps it as asked

    async def listen() -> str:
        await dialer._serve("transparent_tcp", ("127.0.0.1", 0), asyncio.Protocol)
        port = dialer.bound["transparent_tcp"][0][1]
        try:
            return subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout
        finally:
            for server in dialer.servers:
                server.close()

    state, _recv_q, send_q, *_ = asyncio.run(listen()).split()
    assert (state, send_q) == ("LISTEN", "3000")
