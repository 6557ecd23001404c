"""A Ray worker setup hook for the tests: files whose bytes start with CRASH_MARK kill the worker process while
being decoded (`os._exit`, as a crash in a native decoder would), every time. Installed only in the test's own Ray
(`runtime_env={"worker_process_setup_hook": "tests.support.crashing_decoder.install"}`)."""

from __future__ import annotations

import os

CRASH_MARK = b"FUSIONCAM-TEST-CRASH"


def install() -> None:
    """Wrap the dataset worker's decoder so that a marked file ends the process."""
    from fusioncam.dataset import worker

    decode = worker.decode_model_input  # the worker's one decode -> resize -> preprocess call

    def decode_or_die(data: bytes, *args, **kwargs):
        if bytes(data[: len(CRASH_MARK)]) == CRASH_MARK:
            os._exit(70)
        return decode(data, *args, **kwargs)

    worker.decode_model_input = decode_or_die
