# One image for every service in docker-compose.yml: the Dagster code server, webserver and
# daemon, the Spark master and worker (pyspark's own launcher) and the S3 server for the demo.
#
# bookworm, not the default slim tag: Debian 13 (trixie) no longer ships openjdk-17.
FROM python:3.11-slim-bookworm

# Spark needs a Java runtime; make runs the README's install (`make install`); gcc builds the
# parser's C byte counter (setup.py; without it the install falls back to numpy, slower). The
# JRE's post-install step writes man-page links into a folder that slim images leave out.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless make gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    SPARK_WORKER_DIR=/tmp/spark-worker

WORKDIR /opt/pe-analyzer
COPY . .

# The same command a developer runs, into a venv outside the source tree.
RUN make install VENV=/opt/venv

COPY dagster.yaml /opt/dagster/home/dagster.yaml

# /data is the shared volume of docker-compose.yml (Parquet handoff between the Spark driver
# and executors, and the dataset export); a named volume copies this owner on first use.
RUN useradd --create-home --uid 1000 pe \
    && mkdir -p /data \
    && chown -R pe /data /opt/dagster/home
USER pe
