"""Leader election on a coordination.k8s.io/v1 Lease: which replica writes status.

Every replica serves; only the holder of the Lease writes status, so two replicas
never fight over it.  One round (`campaign`) reads the Lease and then creates it,
renews it (the holder), or takes it over once it expired; every write carries the
resourceVersion read, so of two replicas racing the API server lets one win (409 for
the other).  Expiry is judged on the reader's clock against renewTime, as client-go
does; replicas whose clocks differ by more than a lease duration could both think they
hold it for that long.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

from kubernetes import client
from kubernetes.client.rest import ApiException

from clrk_runtime.logs import fields

log = logging.getLogger("clrk_xds.k8s_lease")

# connect, read (seconds) of one call, which the client does not retry (`api_client`):
# a call that hangs must not hold the Lease's turn, nor a stop, for long
TIMEOUT = {"_request_timeout": (3.0, 5.0)}


def micro_now() -> datetime.datetime:
    """Now, for a MicroTime field."""
    now = datetime.datetime.now(datetime.UTC)
    # A MicroTime is read with six fractional digits, which Python leaves out at zero.
    return now.replace(microsecond=now.microsecond or 1)


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: int = 15,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration = duration_seconds
        self.leader = False
        self._renewed: float | None = None  # monotonic time of the last renewal
        # A round still running in a thread when the replica stops must not renew the
        # Lease after `release`: rounds and the release take turns, and none follows it.
        # `release` says so at once, so that a round in hand writes nothing more.
        self._turn = threading.Lock()
        self._released = threading.Event()

    def _spec(self, now: datetime.datetime, transitions: int, acquired=None) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration,
            acquire_time=acquired or now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def campaign(self) -> bool:
        """One round; True if this replica holds the Lease afterwards."""
        with self._turn:
            if self._released.is_set():
                return False
            return self._campaign()

    def _campaign(self) -> bool:
        was = self.leader
        try:
            self.leader = self._round()
            if self.leader:
                self._renewed = time.monotonic()
        except ApiException as exc:
            if exc.status == 409:  # another replica wrote first: it leads
                self.leader = False
            else:
                self.leader = self._still_held()
                log.warning("lease.error", extra=fields(status=exc.status, reason=exc.reason))
        except Exception as exc:  # an unreachable API server
            self.leader = self._still_held()
            log.warning("lease.error", extra=fields(error=str(exc)))
        if self.leader != was:
            log.info(
                "lease.leader" if self.leader else "lease.follower",
                extra=fields(lease=f"{self.namespace}/{self.name}", identity=self.identity),
            )
        return self.leader

    def _still_held(self) -> bool:
        """After a failed renewal: lead on until two thirds of a duration since the
        last renewal (client-go's renew deadline), well before anyone may take over."""
        if not self.leader or self._renewed is None:
            return False
        return time.monotonic() - self._renewed < self.duration * 2 / 3

    def _round(self) -> bool:
        now = micro_now()
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, **TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if self._released.is_set():
                return False
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, 0),
            )
            self.coordination.create_namespaced_lease(self.namespace, body, **TIMEOUT)
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        if holder == self.identity:
            lease.spec = self._spec(now, spec.lease_transitions or 0, spec.acquire_time)
        else:
            renewed = spec.renew_time or spec.acquire_time
            duration = spec.lease_duration_seconds or self.duration
            if holder and renewed is not None:
                if renewed.tzinfo is None:
                    renewed = renewed.replace(tzinfo=datetime.UTC)
                if now < renewed + datetime.timedelta(seconds=duration):
                    return False  # held and not expired
            lease.spec = self._spec(now, (spec.lease_transitions or 0) + 1)
        if self._released.is_set():
            return False
        # resourceVersion from the read: a concurrent writer makes this a 409
        self.coordination.replace_namespaced_lease(self.name, self.namespace, lease, **TIMEOUT)
        return True

    def stopping(self) -> None:
        """No round renews or takes the Lease any more: one in hand ends after the call
        it is in (`TIMEOUT`) without writing."""
        self._released.set()

    def release(self) -> None:
        """Give the Lease up on a clean stop, so another replica need not wait (after a
        round in hand, which `stopping` cut short)."""
        self.stopping()
        with self._turn:
            self.leader = False
            self._release()

    def _release(self) -> None:
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, **TIMEOUT)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, **TIMEOUT
                )
        except Exception as exc:
            log.warning("lease.release_failed", extra=fields(error=str(exc)))
