# Image of this deployment (hitl, its workflows in tasks/ and its celeryconfig.py) for every service of
# docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY hitl ./hitl
COPY approvals ./approvals
COPY tasks ./tasks
RUN pip install --no-cache-dir '.[postgres]'
ENV HITL_HOME=/var/lib/hitl
CMD ["hitl", "--help"]
