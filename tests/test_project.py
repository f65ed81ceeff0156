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
