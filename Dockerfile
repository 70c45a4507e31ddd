# The ai-analytics image: worker, API and demo producer are the same image with different commands.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY tables tables
COPY api api
COPY infra infra
COPY cli cli
RUN pip install --no-cache-dir .
ENTRYPOINT ["ai-analytics"]
