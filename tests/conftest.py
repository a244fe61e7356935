import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run, so CI is never red by the luck of a draw; explore
# locally with HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(1)  # tiny models: more threads only add contention on a busy 2-core machine

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Stitching splices the residual stream.",
    "Hi",
    "Tabs\tand\nnewlines, café 東京 🙂.",
]


@pytest.fixture(scope="session")
def texts():
    return list(TEXTS)


@pytest.fixture(scope="session")
def tok():
    from tests.tiny import byte_bpe_tokenizer

    return byte_bpe_tokenizer()


@pytest.fixture(scope="session")
def llama(tok):
    import stitch
    from tests.tiny import tiny_model

    return stitch.load_model(tiny_model("llama", vocab_size=len(tok)), tokenizer=tok)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """One model cache for every test that runs the demo: its tiny models are trained once per session."""
    return tmp_path_factory.mktemp("stitch-cache")
