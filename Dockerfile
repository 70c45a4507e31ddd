# The ai-analytics image: worker, API and demo producer are the same image with different commands.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY tables tables
COPY api api
COPY infra infra
RUN pip install --no-cache-dir .
ENV AIA_DATA_DIR=/data/worker
VOLUME /data
ENTRYPOINT ["ai-analytics"]
