"""Typed models of the clrk.apoxy.dev/v1alpha1 resources.

The models hold normalised values (hostnames folded, CIDRs parsed, port ranges as
(low, high), durations in seconds) so that nothing downstream re-parses text.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from clrk.api import grammar

API_VERSION = "clrk.apoxy.dev/v1alpha1"
GROUP = "clrk.apoxy.dev"
DEFAULT_NAMESPACE = "default"


def _port(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"must be an integer port, not {type(raw).__name__}")
    if not 1 <= raw <= 65535:
        raise ValueError(f"port {raw} is out of range 1..65535")
    return raw


Hostname = Annotated[str, BeforeValidator(grammar.normalise_hostname)]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(grammar.parse_cidr)
]
ObjectName = Annotated[str, BeforeValidator(grammar.check_object_name)]
DnsLabel = Annotated[str, BeforeValidator(grammar.check_dns_label)]
LabelKey = Annotated[str, BeforeValidator(grammar.check_label_key)]
LabelValue = Annotated[str, BeforeValidator(grammar.check_label_value)]
Port = Annotated[int, BeforeValidator(_port)]
Seconds = Annotated[float, BeforeValidator(grammar.parse_duration)]
Resolver = Annotated[tuple[str, int], BeforeValidator(lambda raw: grammar.parse_host_port(raw, 53))]


class Model(BaseModel):
    """Strict, immutable, camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        extra="forbid",
        frozen=True,
        strict=True,
        arbitrary_types_allowed=True,
    )


class ObjectMeta(BaseModel):
    # Kubernetes-managed fields (uid, resourceVersion, ...) may appear in exported
    # manifests; they carry no policy, so they are ignored rather than rejected.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: ObjectName
    namespace: DnsLabel = DEFAULT_NAMESPACE
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# --- EgressGateway -------------------------------------------------------------------


class ListenerTLS(Model):
    mode: Literal["Terminate", "Passthrough"] = "Passthrough"


class Listener(Model):
    name: DnsLabel
    protocol: Literal["TCP", "TLS", "HTTP", "UDP"]
    port: Port | None = None
    tls: ListenerTLS | None = None

    @model_validator(mode="after")
    def _tls_only_on_tls(self) -> Listener:
        if self.tls is not None and self.protocol != "TLS":
            raise ValueError(f"tls is only allowed on a TLS listener, not {self.protocol}")
        return self

    @property
    def tls_mode(self) -> str | None:
        if self.protocol != "TLS":
            return None
        return self.tls.mode if self.tls else "Passthrough"


class GatewayDNS(Model):
    upstream: list[Resolver] = Field(default_factory=list)
    mode: Literal["Forward", "Filtered"] = "Forward"
    min_ttl: Seconds = Field(default=5.0, alias="minTTL")
    max_ttl: Seconds = Field(default=3600.0, alias="maxTTL")

    @model_validator(mode="after")
    def _ttl_order(self) -> GatewayDNS:
        if self.min_ttl > self.max_ttl:
            raise ValueError(
                f"minTTL ({self.min_ttl:g}s) is greater than maxTTL ({self.max_ttl:g}s)"
            )
        return self


def _endpoint(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL such as 'http://collector:4317'")
    return raw


class OTLP(Model):
    endpoint: Annotated[str, BeforeValidator(_endpoint)]


class UpstreamTLS(Model):
    ca_bundle: Annotated[str, Field(min_length=1)]


def _unique_names(listeners: list[Listener]) -> list[Listener]:
    seen: set[str] = set()
    for listener in listeners:
        if listener.name in seen:
            raise ValueError(f"listener name {listener.name!r} is used twice")
        seen.add(listener.name)
    return listeners


class EgressGatewaySpec(Model):
    default_policy: Literal["deny-all", "allow-all"] = "deny-all"
    listeners: Annotated[
        list[Listener], Field(min_length=1, max_length=16), AfterValidator(_unique_names)
    ]
    dns: GatewayDNS = Field(default_factory=GatewayDNS)
    otlp: OTLP | None = None
    upstream_tls: UpstreamTLS | None = Field(default=None, alias="upstreamTLS")
    # Report: denials (but blocked addresses, unknown agents, credential misuse) are
    # recorded with clrk.egress.enforced=false and let through.
    mode: Literal["Enforce", "Report"] = "Enforce"


# --- EgressL4Route -------------------------------------------------------------------


class ParentRef(Model):
    group: Literal["clrk.apoxy.dev"] = GROUP
    kind: Literal["EgressGateway"] = "EgressGateway"
    name: ObjectName
    namespace: DnsLabel | None = None
    section_name: DnsLabel | None = None


class PortSpec(Model):
    """`{port: N}` or `{startPort: A, endPort: B}`, exposed as the interval (low, high)."""

    port: Port | None = None
    start_port: Port | None = None
    end_port: Port | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PortSpec:
        has_range = self.start_port is not None or self.end_port is not None
        if self.port is not None and has_range:
            raise ValueError("give either port or startPort/endPort, not both")
        if self.port is None and not has_range:
            raise ValueError("give port or startPort and endPort")
        if has_range and (self.start_port is None or self.end_port is None):
            raise ValueError("a port range needs both startPort and endPort")
        if has_range and self.start_port > self.end_port:  # type: ignore[operator]
            raise ValueError(f"startPort {self.start_port} is greater than endPort {self.end_port}")
        return self

    @property
    def interval(self) -> tuple[int, int]:
        if self.port is not None:
            return (self.port, self.port)
        return (self.start_port, self.end_port)  # type: ignore[return-value]


class LabelSelectorRequirement(Model):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Model):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class RouteMatch(Model):
    destination_hostnames: list[Hostname] = Field(default_factory=list)
    destination_cidrs: list[Network] = Field(default_factory=list, alias="destinationCIDRs")
    ports: list[PortSpec] = Field(default_factory=list)
    protocol: Literal["TCP", "UDP"] = "TCP"
    source_agents: LabelSelector | None = None


class RouteRule(Model):
    matches: Annotated[list[RouteMatch], Field(min_length=1)]


class EgressL4RouteSpec(Model):
    parent_refs: Annotated[list[ParentRef], Field(min_length=1)]
    rules: Annotated[list[RouteRule], Field(min_length=1)]


# --- EgressDenyPolicy ----------------------------------------------------------------


class TargetRef(Model):
    group: Literal["clrk.apoxy.dev"] = GROUP
    kind: Literal["EgressL4Route"] = "EgressL4Route"
    name: ObjectName


def _status_code(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 400 <= raw <= 599:
        raise ValueError(f"must be an HTTP status code 400..599, not {raw!r}")
    return raw


class DenyResponse(Model):
    status_code: Annotated[int, BeforeValidator(_status_code)] = 403
    message: str | None = None


class EgressDenyPolicySpec(Model):
    target_ref: TargetRef | None = None
    target_refs: list[TargetRef] = Field(default_factory=list)
    deny_response: DenyResponse = Field(default_factory=DenyResponse)
    mode: Literal["Enforce", "Report"] = "Enforce"  # Report: trial it, recorded, not denied

    @model_validator(mode="after")
    def _has_target(self) -> EgressDenyPolicySpec:
        if self.target_ref is None and not self.target_refs:
            raise ValueError("give targetRef or targetRefs")
        return self

    @property
    def targets(self) -> list[TargetRef]:
        return ([self.target_ref] if self.target_ref else []) + list(self.target_refs)


# --- EgressCredential ---------------------------------------------------------------

# RFC 9110 token characters; a header name is matched case-insensitively, kept lower.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# Headers Envoy or clrk own: setting them would break the exchange or forge its facts.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "trailer",
    }
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# A placeholder travels in headers and the agent's environment, and the tripwire finds
# it inside a header value: visible ASCII, long enough not to occur by chance.
_PLACEHOLDER = re.compile(r"[!-~]{8,256}")
_PREFIX = re.compile(r"[ -~]{0,64}")


def _header_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a header name, not {type(raw).__name__}")
    name = raw.lower()
    if not name:
        raise ValueError("must not be empty")
    if not _HEADER_NAME.fullmatch(name) or len(name) > 128:
        raise ValueError(f"{raw!r} is not an HTTP header name")
    if name in _RESERVED_HEADERS or name.startswith("x-clrk-"):
        raise ValueError(f"{raw!r} is a header the gateway must not set")
    return name


def _env_name(raw: object) -> str:
    if not isinstance(raw, str) or not _ENV_NAME.fullmatch(raw):
        raise ValueError(f"must be an environment variable name, not {raw!r}")
    return raw


def _placeholder(raw: object) -> str:
    if not isinstance(raw, str) or not _PLACEHOLDER.fullmatch(raw):
        raise ValueError("must be 8..256 visible ASCII characters (no spaces)")
    return raw


def _prefix(raw: object) -> str:
    if not isinstance(raw, str) or not _PREFIX.fullmatch(raw):
        raise ValueError("must be at most 64 printable ASCII characters")
    return raw


def _secret_file(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw:
        raise ValueError(f"must be an absolute path, not {raw!r}")
    return raw


def _secret_key(raw: object) -> str:
    if not isinstance(raw, str) or not _SECRET_KEY.fullmatch(raw) or len(raw) > 253:
        raise ValueError(f"must be a Secret data key, not {raw!r}")
    return raw


EnvName = Annotated[str, BeforeValidator(_env_name)]


class SecretKeyRef(Model):
    name: ObjectName
    key: Annotated[str, BeforeValidator(_secret_key)]


class CredentialSource(Model):
    """Exactly one of a file (re-read when it changes), the control plane's
    environment, or a Kubernetes Secret."""

    file: Annotated[str, BeforeValidator(_secret_file)] | None = None
    env: EnvName | None = None
    secret_ref: SecretKeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialSource:
        fields = (("file", self.file), ("env", self.env), ("secretRef", self.secret_ref))
        given = [name for name, value in fields if value is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of file, env or secretRef ({found})")
        return self

    @property
    def kind(self) -> str:
        return "file" if self.file is not None else "env" if self.env is not None else "secretRef"

    @property
    def where(self) -> str:
        """The source's address, never its value: a path, a variable, name/key."""
        if self.secret_ref is not None:
            return f"{self.secret_ref.name}/{self.secret_ref.key}"
        return self.file if self.file is not None else self.env  # type: ignore[return-value]


class EgressCredentialSpec(Model):
    target_ref: TargetRef
    hostnames: list[Hostname] = Field(default_factory=list)
    header: Annotated[str, BeforeValidator(_header_name)]
    prefix: Annotated[str, BeforeValidator(_prefix)] = ""
    placeholder: Annotated[str, BeforeValidator(_placeholder)]
    placeholder_env: EnvName | None = None
    source: CredentialSource


# --- Agents --------------------------------------------------------------------------


def _gateway_ref(raw: object) -> str:
    """`name` (the agent's namespace) or `namespace/name`."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a gateway name, not {type(raw).__name__}")
    namespace, _, name = raw.rpartition("/")
    if namespace:
        grammar.check_dns_label(namespace)
    grammar.check_object_name(name)
    return raw


class EgressRef(Model):
    gateway_ref: Annotated[str, BeforeValidator(_gateway_ref)]


class AgentSpec(Model):
    # Agent specs carry fields for other systems (image, trigger, ...): kept, not checked.
    model_config = ConfigDict(extra="allow")

    egress_refs: list[EgressRef] = Field(default_factory=list)


SPEC_MODELS: dict[str, type[Model]] = {
    "EgressGateway": EgressGatewaySpec,
    "EgressL4Route": EgressL4RouteSpec,
    "EgressDenyPolicy": EgressDenyPolicySpec,
    "EgressCredential": EgressCredentialSpec,
    "DaemonAgent": AgentSpec,
    "TaskAgent": AgentSpec,
}
AGENT_KINDS = frozenset({"DaemonAgent", "TaskAgent"})


@dataclass(frozen=True, slots=True)
class Source:
    file: str
    document: int


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    metadata: ObjectMeta
    spec: Any
    source: Source

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def ref(self) -> str:
        """`namespace/name`, the form records and the CLI use."""
        return f"{self.metadata.namespace}/{self.metadata.name}"
