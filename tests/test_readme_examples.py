"""The README's building-block example, run as written (its code block saved to a file, under torchrun with the
4 processes it asks for): every rank's gathered attention equals one-device attention."""

from __future__ import annotations

import re
import subprocess
import sys

from cli_run import REPO, cli_env


def readme_block(after: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(after)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_building_block_example_matches_one_device_attention(tmp_path):
    script = tmp_path / "blocks.py"
    script.write_text(readme_block("The building blocks, for your own models"))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                          str(script)], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=180)
    assert res.returncode == 0, res.stdout
    diffs = {int(r): float(d) for r, d in re.findall(r"rank (\d): max abs diff ([0-9.e+-]+);", res.stdout)}
    assert sorted(diffs) == [0, 1, 2, 3], res.stdout
    assert max(diffs.values()) < 1e-5, diffs
    assert res.stdout.count("'ulysses':") == 4 and res.stdout.count("'ring':") == 4, res.stdout
