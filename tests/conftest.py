"""Shared test setup: a headless matplotlib backend for this process, and small configs.

The backend is chosen in-process, not through ``MPLBACKEND``: an environment variable
would leak into the kernels nbval starts, and the notebooks need the inline backend.
"""
import pytest

try:
    import matplotlib
    matplotlib.use("Agg")
except ImportError:  # the core tests need no matplotlib
    pass



@pytest.fixture
def tiny_llama():
    """A tiny Llama-family config: small enough to build for real on the CPU."""
    return {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
            "max_position_embeddings": 256, "tie_word_embeddings": False}


@pytest.fixture
def ax():
    """A fresh matplotlib axes (Agg), closed after the test."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def pytest_report_header(config):
    from memlib.measure.provenance import installed_versions, pinned_versions
    have, want = installed_versions(), pinned_versions()
    return [f"memlib: torch {have['torch']}, transformers {have['transformers']} installed; pinned: "
            + ", ".join(f"{k} {v}" for k, v in want.items())]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test, when torch or transformers differ from the pinned versions, says so:
    the committed measurements were made with the pins, and a newer release can change
    real memory (the README's "Pinned versions")."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        from memlib.measure.provenance import version_mismatch
        why = version_mismatch()
        if why:
            report.sections.append(("memlib: installed versions differ from the pins", why))
