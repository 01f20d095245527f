"""The asyncio shell of intercepted UDP (SPEC 5.1-5.3): datagrams TPROXYed to the dialer,
DNS to the forwarder and everything else to per-flow decisions.  Allowed flows are
relayed by the dialer itself (Envoy is not involved for UDP); denied flows are dropped
with one record per flow.  Replies leave from the original destination address so the
agent's socket accepts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from clrk.policy import Connection, decide
from clrk_worker_dialer.dns_forwarder import Forwarder
from clrk_worker_dialer.flows import FlowTable, UdpFlow
from clrk_worker_dialer.send_batch import SendBatch
from clrk_worker_dialer.session import best_name
from clrk_worker_dialer.sockopts import (
    CMSG_SPACE,
    enable_orig_dst,
    original_destination_cmsg,
    spoofed_reply_socket,
    tproxy_udp_socket,
)
from clrk_worker_dialer.state import DialerState

log = logging.getLogger("clrk.dialer.udp")

Handler = Callable[[bytes, tuple[str, int], tuple[str, int]], None]
DnsAnswer = tuple[bytes, tuple[str, int], tuple[str, int]]  # the wire, to whom, from where
MAX_REPLY_SOCKETS = 1024
READS_PER_WAKEUP = 64  # fairness between sockets on one loop


class UdpFront:
    def __init__(self, state: DialerState, forwarder: Forwarder) -> None:
        self.state = state
        self.forwarder = forwarder
        self.loop = asyncio.get_running_loop()
        self.flows = FlowTable(state.config.udp_idle_timeout)
        self.listening: list[socket.socket] = []
        # original destination -> socket that sends from it (and, as TPROXY prefers a
        # socket bound to the destination, also receives the agent's next datagrams)
        self.replies: OrderedDict[tuple[str, int], socket.socket] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        self._answers: SendBatch[DnsAnswer] = SendBatch(self._send_answers)
        self.closed = False

    # --- sockets ---------------------------------------------------------------------

    def listen(self, host: str, port: int, dns_port: bool) -> None:
        sock = tproxy_udp_socket(host, port)
        self.listening.append(sock)
        self._watch(sock, self.on_dns if dns_port else self.on_datagram)
        if self._sweeper is None:
            self._sweep()

    def _watch(self, sock: socket.socket, handler: Handler) -> None:
        self.loop.add_reader(sock.fileno(), self._readable, sock, handler)

    def _readable(self, sock: socket.socket, handler: Handler) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, src = sock.recvmsg(65535, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp receive failed: %s", exc)
                return
            dst = original_destination_cmsg(ancdata)
            if dst is None:
                continue  # not TPROXYed: nothing to say where it was going
            try:
                handler(data, (src[0], src[1]), dst)
            except Exception:
                log.exception("udp datagram handling failed")

    def reply_socket(self, dst: tuple[str, int], handler: Handler) -> socket.socket | None:
        sock = self.replies.get(dst)
        if sock is not None:
            self.replies.move_to_end(dst)
            return sock
        try:
            sock = spoofed_reply_socket(dst[0], dst[1])
            enable_orig_dst(sock)
        except OSError as exc:
            log.warning("cannot send from %s:%s: %s", dst[0], dst[1], exc)
            return None
        self.replies[dst] = sock
        self._watch(sock, handler)
        while len(self.replies) > MAX_REPLY_SOCKETS:
            _, old = self.replies.popitem(last=False)
            self._close(old)
        return sock

    def _close(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock.fileno())
        sock.close()

    def _sweep(self) -> None:
        for flow in self.flows.expire(time.monotonic()):
            self._drop_flow_state(flow)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _drop_flow_state(self, flow: UdpFlow) -> None:
        upstream = flow.state.pop("upstream", None)
        if upstream is not None:
            self._close(upstream)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows):
            self._drop_flow_state(flow)
        for sock in self.listening + list(self.replies.values()):
            self._close(sock)
        self.listening.clear()
        self.replies.clear()
        self._answers.clear()
        self.forwarder.close()  # the DNS queries still on their way

    # --- DNS -------------------------------------------------------------------------

    def on_dns(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if self.state.policy is None:
            return
        agent = self.state.agent_for_source(src[0])
        self.forwarder.handle_udp(data, src, agent, lambda answer: self._reply(answer, src, dst))

    def _reply(self, answer: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if self.closed:
            return  # an answer after the end: no new reply socket
        self._answers.add(self.loop, (answer, src, dst))

    def _send_answers(self, answers: list[DnsAnswer]) -> None:
        """The DNS answers of a turn of the loop (send_batch)."""
        if self.closed:
            return
        for answer, src, dst in answers:
            sock = self.reply_socket(dst, self.on_dns)
            if sock is not None:
                try:
                    sock.sendto(answer, src)
                except OSError as exc:
                    log.debug("dns reply failed: %s", exc)

    # --- other UDP -------------------------------------------------------------------

    def on_datagram(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        state = self.state
        policy = state.policy
        if policy is None:
            return
        agent = state.agent_for_source(src[0])
        names = state.names(agent, dst[0])

        def decide_flow():
            return decide(policy, agent, Connection("UDP", dst[0], dst[1], names), state.own)

        flow, new = self.flows.datagram((src, dst), time.monotonic(), decide_flow)
        if new and not flow.decision.allowed:  # Report mode records what it lets through
            if not flow.allowed:
                self._drop_flow_state(flow)
            state.record_dial_denied(
                flow.decision,
                agent=agent,
                dst=dst,
                transport="udp",
                dst_name=best_name(flow.decision, names),
                src=src,
            )
        if not flow.allowed:
            return
        upstream = flow.state.get("upstream")
        if upstream is None:
            upstream = self._open_upstream(flow, src, dst)
            if upstream is None:
                return
        try:
            upstream.send(data)
        except OSError as exc:
            log.debug("udp send to %s failed: %s", dst, exc)

    def _open_upstream(self, flow: UdpFlow, src, dst) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(dst)
        except OSError as exc:
            sock.close()
            log.debug("udp connect to %s failed: %s", dst, exc)
            return None
        flow.state["upstream"] = sock
        self.loop.add_reader(sock.fileno(), self._upstream_readable, sock, flow, src, dst)
        return sock

    def _upstream_readable(self, sock: socket.socket, flow: UdpFlow, src, dst) -> None:
        reply = self.reply_socket(dst, self.on_datagram)
        for _ in range(READS_PER_WAKEUP):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the connected socket
            flow.last_seen = time.monotonic()
            if reply is not None:
                try:
                    reply.sendto(data, src)
                except OSError as exc:
                    log.debug("udp reply to %s failed: %s", src, exc)
