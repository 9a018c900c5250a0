"""The package's shape: no import cycle, and serving code that does not load the training stack."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_import_graph_has_no_cycle():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "import_graph.py")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "0 cycle(s)" in r.stdout, r.stdout + r.stderr


def test_encoding_and_scoring_do_not_import_the_training_input_stack():
    code = ("import sys, bitembed_jax.encode, bitembed_jax.quant.storage, bitembed_jax.cli; "
            "print(sorted(m for m in ('grain', 'tensorflow_datasets', 'bitembed_jax.train.loop') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_storage_scoring_needs_no_jax():
    code = "import sys, bitembed_jax.quant.storage; print('jax' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
