FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
COPY mopo_core mopo_core
COPY synthetic synthetic
COPY app app
COPY .streamlit .streamlit
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir -e .
# The app runs as an unprivileged user: the code stays root-owned and read-only to it. Its run
# store, job files and models folder live in one folder of its home (platformdirs'
# ~/.local/share/mopo-studio), made here so that a volume mounted there belongs to it.
RUN useradd --create-home --uid 10001 --user-group mopo
USER mopo
RUN mkdir -p /home/mopo/.local/share/mopo-studio
# Browsers see an exception's type and a generic message only; the traceback goes to the log.
ENV STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=type
EXPOSE 8501
# All interfaces, so that a published port reaches it; no authentication (README, "Container").
CMD ["streamlit", "run", "app/main.py", "--server.address=0.0.0.0", "--server.port=8501"]
