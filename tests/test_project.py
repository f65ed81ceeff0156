"""The README's commands stay true: .ci/run runs exactly the README's test command."""
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _commands(text):
    return [line.strip() for line in text.splitlines() if line.startswith("    python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    assert len(readme) >= 2, "README opens with the app command and the test command"
    assert "streamlit run app/main.py" in readme[0]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme[1] in ci_lines


def test_dockerfile_starts_the_app_on_8501():
    text = (ROOT / "Dockerfile").read_text()
    assert "app/main.py" in text and "8501" in text


def test_dockerfile_runs_unprivileged_and_hides_tracebacks():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    cmd = next(i for i, line in enumerate(lines) if line.startswith("CMD "))
    assert users and users[-1] < cmd, "a USER line comes before CMD"
    assert lines[users[-1]].split()[1] not in ("root", "0")
    assert "ENV STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=type" in lines


def test_readme_says_the_container_is_unauthenticated():
    text = (ROOT / "README.md").read_text()
    assert "no authentication" in text and "127.0.0.1:8501:8501" in text
