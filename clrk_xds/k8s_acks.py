"""What each control-plane replica's Envoys acknowledged, shared through Leases.

Envoys connect to any replica behind the Service, but one replica writes status.  So
every replica publishes the ACKs and NACKs its ADS server recorded, as JSON in an
annotation of a Lease of its own (`clrk-acks-<identity>`, labelled so the writer can
list them), and the writer reads them all: an object is Programmed when an Envoy of
its gateway ACKed the version in force on any replica.  A report not renewed for a
while (a replica gone) is ignored.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Mapping

from kubernetes import client
from kubernetes.client.rest import ApiException

from clrk_runtime.logs import fields
from clrk_xds.k8s_lease import TIMEOUT, micro_now

log = logging.getLogger("clrk_xds.k8s_acks")

ANNOTATION = "clrk.apoxy.dev/acks"
LABEL = "clrk.apoxy.dev/acks-of"

# node id -> type URL -> [acked version, nacked version, NACK message]
Report = dict[str, dict[str, list]]


def report_of(statuses: Mapping[str, Mapping]) -> Report:
    """AdsServer.status per node -> the JSON-able report."""
    return {
        node: {
            type_url: [st.acked_version, st.nacked_version, st.nack_message]
            for type_url, st in sorted(by_type.items())
        }
        for node, by_type in sorted(statuses.items())
        if by_type
    }


class AckBoard:
    def __init__(
        self, api: client.ApiClient, namespace: str, identity: str, max_age: float = 120.0
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.identity = namespace, identity
        self.name = f"clrk-acks-{identity}"[:253]
        self.max_age = max_age  # seconds after which a replica's report is ignored
        self.published: Report | None = None
        self._published_at = float("-inf")

    def publish(self, report: Report) -> None:
        """Write this replica's report when it changed, or a third of `max_age` after
        the last write (so that the writer does not take it for a gone replica's)."""
        fresh = time.monotonic() - self._published_at < self.max_age / 3
        if report == self.published and fresh:
            return
        meta = client.V1ObjectMeta(
            name=self.name,
            namespace=self.namespace,
            labels={LABEL: "true"},
            annotations={ANNOTATION: json.dumps(report, sort_keys=True)},
        )
        spec = client.V1LeaseSpec(holder_identity=self.identity, renew_time=micro_now())
        try:
            current = self.coordination.read_namespaced_lease(self.name, self.namespace, **TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease(
                self.namespace, client.V1Lease(metadata=meta, spec=spec), **TIMEOUT
            )
        else:
            meta.resource_version = current.metadata.resource_version
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, client.V1Lease(metadata=meta, spec=spec), **TIMEOUT
            )
        self.published, self._published_at = report, time.monotonic()

    def others(self) -> list[Report]:
        """The reports of the other replicas, fresh ones only."""
        listed = self.coordination.list_namespaced_lease(
            self.namespace, label_selector=LABEL, **TIMEOUT
        )
        now = datetime.datetime.now(datetime.UTC)
        out = []
        for lease in listed.items:
            spec = lease.spec
            if spec is None or spec.holder_identity == self.identity:
                continue
            renewed = spec.renew_time
            if renewed is not None and renewed.tzinfo is None:
                renewed = renewed.replace(tzinfo=datetime.UTC)
            if renewed is None or (now - renewed).total_seconds() > self.max_age:
                continue
            try:
                report = json.loads((lease.metadata.annotations or {}).get(ANNOTATION, "{}"))
            except ValueError:
                log.warning("acks.bad_report", extra=fields(lease=lease.metadata.name))
                continue
            if isinstance(report, dict):
                out.append(report)
        return out
