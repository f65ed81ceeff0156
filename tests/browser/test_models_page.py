"""Browser tests of the Models page and of Compare with language-model runs, on the real server in
headless Chromium (slow). Screenshots go to ``test-artifacts/screenshots``: ``models.png`` (a model
loaded, its samples scored), ``models_unloaded.png`` (the freed memory after Unload),
``models_trained_policy.png`` (a finished run's policy sampled beside its reference, at 1280×720),
``models_trained_error.png`` (a damaged checkpoint refused, naming the run and the file) and
``compare_lm.png`` (an LM run's point selected: its metrics, curves and generations beside the
reference model's).

The models folder is a temporary one holding a tiny checkpoint. For the README's screenshot, set
``MOPO_SCREENSHOT_REAL_MODELS=1``: when this machine has SmolLM2 and a preference model in the
default models folder (``python -m mopo_core models fetch-smollm2``, ``prefmodel train --out
<models>/prefmodels/NAME``) they are linked in, and SmolLM2 is the model loaded (chat template,
preference-model scores; minutes of CPU sampling). Without it the test does not depend on what
this machine has downloaded."""
import os
import time
from pathlib import Path

import pytest

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.support import (
    assert_no_errors,
    button,
    open_page,
    retry,
    settle,
    shot,
    start_server,
)

USER_MODELS = Path.home() / ".local" / "share" / "mopo-studio" / "models"
SMOLLM2 = "SmolLM2-135M-Instruct"


def _smollm2_available() -> bool:
    from mopo_core.lm.registry import checkpoint_problem

    wanted = os.environ.get("MOPO_SCREENSHOT_REAL_MODELS") == "1"
    return wanted and checkpoint_problem(USER_MODELS / SMOLLM2) is None


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(store, models folder): example runs plus two MOPO/DPO runs trained live on the text task;
    a tiny checkpoint (and SmolLM2 with the preference models, when present on this machine)."""
    from app.presenters import compare as compare_presenter
    from mopo_core.lm.config import TrainConfig
    from mopo_core.lm.models import save_model, tiny_gpt, train_sft, word_tokenizer
    from mopo_core.runs import RunStore
    from mopo_core.training.text_task import TextTaskSetup, train_on_text_task
    from synthetic.text_task import TextTask, vocabulary

    root = tmp_path_factory.mktemp("browser_models")
    store = RunStore(root / "runs.sqlite")
    compare_presenter.create_example_runs(store, steps=300)
    setup = TextTaskSetup(n_prompts=16, sft_steps=150)
    for config in (TrainConfig(method="mopo", thresholds=(0.6,), steps=20, batch_size=8),
                   TrainConfig(method="dpo", steps=20, batch_size=8)):
        train_on_text_task(config, setup, store, root / f"checkpoints-{config.method}")  # offered on Models
    models = root / "models"
    tokenizer = word_tokenizer(vocabulary())
    model = tiny_gpt(len(tokenizer), tokenizer=tokenizer)
    train_sft(model, tokenizer, TextTask(n_prompts=8).corpus(), steps=60, batch_size=16)
    save_model(model, tokenizer, models / "tiny-sft")
    if _smollm2_available():
        (models / SMOLLM2).symlink_to(USER_MODELS / SMOLLM2)
        if (USER_MODELS / "prefmodels").is_dir():
            (models / "prefmodels").symlink_to(USER_MODELS / "prefmodels")
    return root / "runs.sqlite", models


@pytest.fixture(scope="module")
def server(folders):
    store, models = folders
    proc, url = start_server({"MOPO_STORE": str(store), "MOPO_MODELS": str(models)})
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _wait_text(driver, text, timeout=240):
    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    settle(driver)


def _choose(driver, testid, label, option):
    """Pick ``option`` in the select box (``testid`` stSelectbox / stMultiSelect) labelled ``label``."""
    box = retry(lambda: next(e for e in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
                              if label in e.text))
    field = box.find_element(By.CSS_SELECTOR, "input")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.click()
    field.send_keys(option)
    time.sleep(0.5)
    field.send_keys(Keys.ENTER)
    field.send_keys(Keys.ESCAPE)
    settle(driver)


def _scroll_to(driver, text):
    element = next(e for e in driver.find_elements(By.CSS_SELECTOR, "h1, h2, h3, summary, p, span")
                   if e.text.strip().startswith(text))
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
    time.sleep(1.0)


def test_models_page_load_sample_and_unload(server, browser, folders):
    name = SMOLLM2 if (folders[1] / SMOLLM2).exists() else "tiny-sft"
    browser.set_window_size(1500, 2300)
    browser.get(f"{server}/models")
    _wait_text(browser, "Registered models", 120)
    assert_no_errors(browser, "models")
    _choose(browser, "stSelectbox", "Model", name)
    button(browser, "Load").click()
    _wait_text(browser, f"Loaded {name} on", 300)
    assert_no_errors(browser, "models after Load")
    if name == SMOLLM2:
        _choose(browser, "stSelectbox", "Example prompts", "how do i")
    retry(lambda: button(browser, "Sample").click())
    _wait_text(browser, "Mean: ", 300)
    assert_no_errors(browser, "models after Sample")
    _scroll_to(browser, "Load a model")
    shot(browser, "models")
    retry(lambda: button(browser, "Unload").click())
    _wait_text(browser, f"Unloaded {name}: freed", 120)
    assert_no_errors(browser, "models after Unload")
    assert "No model loaded" in browser.find_element(By.TAG_NAME, "body").text
    browser.execute_script("window.scrollTo(0, 0);")
    shot(browser, "models_unloaded")


def _pick_option(driver, label, option):
    """Click the option containing ``option`` in the select box labelled ``label`` (typed to filter)."""
    box = retry(lambda: next(e for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]')
                              if label in e.text))
    field = box.find_element(By.CSS_SELECTOR, "input")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
    field.click()
    field.send_keys(option)
    retry(lambda: next(o for o in driver.find_elements(By.CSS_SELECTOR, '[role="option"]') if option in o.text).click())
    settle(driver)


def test_a_finished_runs_policy_is_sampled_beside_its_reference_and_a_damaged_one_is_named(server, browser,
                                                                                          folders):
    from app.presenters import models as models_presenter
    from mopo_core.runs import RunStore

    mopo, dpo = models_presenter.trained_policies(RunStore(folders[0]))
    browser.set_window_size(1280, 720)
    browser.get(f"{server}/models")
    _wait_text(browser, "Policy from a finished run", 120)
    _pick_option(browser, "Policy from a finished run", f"run {mopo.run_id} ·")
    _wait_text(browser, f"Loaded run {mopo.run_id}'s policy", 240)
    assert_no_errors(browser, "models, a run's policy loaded")
    retry(lambda: button(browser, "Sample both").click())
    _wait_text(browser, "Reference (what it was trained from)", 240)
    assert_no_errors(browser, "models, a run's policy sampled")
    tables = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stTable"]')
    assert len(tables) == 2 and all("response" in t.text and "helpfulness" in t.text for t in tables)
    _scroll_to(browser, "Seed 0, temperature")
    shot(browser, "models_trained_policy")

    last = Path(dpo.checkpoint)
    genuine = last.read_bytes()
    try:
        last.write_bytes(b"not a checkpoint")
        _pick_option(browser, "Policy from a finished run", f"run {dpo.run_id} ·")
        _wait_text(browser, f"Could not load run {dpo.run_id}'s policy", 240)
        errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')]
        assert any(f"run {dpo.run_id}" in e and str(last) in e for e in errors), errors
        _scroll_to(browser, "Policy from a finished run")
        shot(browser, "models_trained_error")
    finally:
        last.write_bytes(genuine)


def test_compare_an_lm_run_point(server, browser):
    browser.set_window_size(1500, 2600)
    open_page(browser, server, "compare")
    for run_id in (6, 7):
        _choose(browser, "stMultiSelect", "Runs to compare", f"{run_id} · train")
    _wait_text(browser, "are not overlaid", 120)
    label = next(e for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
                 if e.text.strip().startswith("win-rates against the reference model"))
    label.click()
    settle(browser)
    _wait_text(browser, "win-rate vs the reference model", 120)
    browser.execute_script("window.scrollTo(0, 0);")
    shot(browser, "compare_lm_front")
    points = [p for p in browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace .points path")
              if p.is_displayed() and p.size["width"] > 0]
    assert len(points) >= 2
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", points[0])
    webdriver.ActionChains(browser).move_to_element(points[0]).click().perform()
    _wait_text(browser, "Generations: this policy beside the reference model", 120)
    assert_no_errors(browser, "compare with an LM point selected")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Run config" in text and "reference model" in text and "Training curves" in browser.page_source
    _scroll_to(browser, "Selected point(s)")
    shot(browser, "compare_lm")
