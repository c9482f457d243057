"""The README's examples of using the losses and a trained backbone in another project run as
written."""

import pathlib
import re

from helpers import tiny_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_losses_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Using the losses in another JAX project") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, str(README), "exec"), {})
    assert "NT-Xent" in capsys.readouterr().out


def test_backbone_example_reads_a_finished_run(finished_run, capsys):
    _, workdir = finished_run(tiny_config())
    capsys.readouterr()  # the run's own output, when this test ran it
    text = README.read_text()
    section = text[text.index("### Using a trained backbone in another program") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'workdir = "runs/demo"' in code
    code = code.replace('workdir = "runs/demo"', f"workdir = {str(workdir)!r}")
    exec(compile(code, str(README), "exec"), {})
    assert capsys.readouterr().out.strip() == "(8, 16)"  # the tiny ResNet's 16 features
