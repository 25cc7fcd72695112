"""A run's terminal keeps what the engine says; what the libraries say goes to the run's log."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import dataengine
from dataengine.logs import libraries_to


def test_library_warnings_records_and_bars_go_to_the_log(tmp_path, capsys, recwarn):
    import datasets
    import transformers.utils.logging
    from datasets import Dataset

    log = tmp_path / "libraries.log"
    before = (
        datasets.is_progress_bar_enabled(),
        transformers.utils.logging.is_progress_bar_enabled(),
        logging.getLogger("transformers").handlers[:],
        logging.getLogger("transformers").propagate,
    )
    with libraries_to(log):
        # a warning raised in a library (as torch's pin_memory one is), a library's log record, a datasets map
        warnings.warn_explicit("'pin_memory' argument is set as true", UserWarning, "/x/site-packages/torch/a.py", 9)
        logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
        Dataset.from_dict({"a": list(range(5))}).map(lambda row: row, desc="Tokenizing train dataset")
        transformers.utils.logging.get_logger("transformers.trainer").warning("trainer says")
        # the engine's own warning is shown as warnings are (pytest records them instead of printing them)
        warnings.warn_explicit("engine warns", UserWarning, str(Path(dataengine.__file__).parent / "runner.py"), 3)
    out = capsys.readouterr()
    text = log.read_text()
    for said in ("pin_memory", "some weights were not used", "trainer says"):
        assert said in text and said not in out.err + out.out
    assert "Tokenizing train dataset" not in out.err + out.out
    assert [str(w.message) for w in recwarn] == ["engine warns"] and "engine warns" not in text
    # and everything is as it was before
    after = (
        datasets.is_progress_bar_enabled(),
        transformers.utils.logging.is_progress_bar_enabled(),
        logging.getLogger("transformers").handlers[:],
        logging.getLogger("transformers").propagate,
    )
    assert after == before
