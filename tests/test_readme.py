"""The README's example of using the losses from another project runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_losses_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Using the losses in another JAX project") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, str(README), "exec"), {})
    assert "NT-Xent" in capsys.readouterr().out
