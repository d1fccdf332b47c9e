# Production image: the locked dependencies, no development tools, an unprivileged user.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY identity identity
COPY oidc oidc
COPY ledger ledger
COPY keys keys
RUN UV_PROJECT_ENVIRONMENT=/opt/venv uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 nicecard
USER nicecard
WORKDIR /srv
ENV PATH=/opt/venv/bin:$PATH NICECARD_MODE=production NICECARD_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
CMD ["nicecard", "serve"]
