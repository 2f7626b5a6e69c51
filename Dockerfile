# Image for hitl's worker, beat and flower services (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY hitl ./hitl
COPY approvals ./approvals
COPY tasks ./tasks
COPY examples ./examples
RUN pip install --no-cache-dir '.[postgres]'
ENV HITL_HOME=/var/lib/hitl
CMD ["hitl", "--help"]
