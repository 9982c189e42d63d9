# maculad in a container image.
#
# maculad answers DNS on 127.0.0.153:53 and relays each route's loopback IP (127.x) on ports
# 80/443 of the HOST: it must share the host's network namespace. Run it with --network host
# (a bridge network would put every address inside the container, out of the host's reach):
#
#   docker build -t maculad:0.1.0 .
#   docker run -d --name maculad --restart unless-stopped --network host \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /etc/maculad:/etc/maculad:ro \
#     -v maculad-state:/var/lib/maculad \
#     -v /run/maculad:/run/maculad \
#     maculad:0.1.0
#
# It runs as the unprivileged user "maculad"; the interpreter carries the single file capability
# CAP_NET_BIND_SERVICE for ports 53/80/443 (do not run it with --security-opt no-new-privileges,
# which disables file capabilities, or drop NET_BIND_SERVICE). --group-add gives it the Docker
# socket. The control socket appears in /run/maculad on the host: with control.group set to a
# numeric host gid (e.g. group = "999" for the host's "macula") host users in that group can use
# maculactl; otherwise use sudo maculactl. On macOS, run maculad natively (launchd), not here:
# Docker Desktop's --network host does not reach the Mac's loopback.
#
# The HEALTHCHECK asks /healthz on metrics.listen (default 127.0.0.1:9469); set
# MACULAD_HEALTH_URL when the config moves it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MACULAD_HEALTH_URL=http://127.0.0.1:9469/healthz

RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 maculad \
 && groupadd --system --gid 10002 macula \
 && useradd --system --uid 10001 --gid maculad --groups macula \
        --home-dir /var/lib/maculad --shell /usr/sbin/nologin maculad

COPY . /src
# gcc builds the relay's pump (maculad/proxy/_pump.c) and leaves with the sources
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install /src \
 && apt-get purge -y --auto-remove gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* /src \
 && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v python3)")" \
 && install -d -o maculad -g maculad -m 0750 /var/lib/maculad \
 && install -d -o maculad -g maculad -m 0755 /run/maculad

COPY config/maculad.toml /etc/maculad/maculad.toml

USER maculad
WORKDIR /var/lib/maculad
VOLUME ["/var/lib/maculad"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MACULAD_HEALTH_URL'], timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["maculad"]
CMD ["run", "--config", "/etc/maculad/maculad.toml"]
