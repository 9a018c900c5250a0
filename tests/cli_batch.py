"""Run several ``bitembed-jax`` command lines in one fresh Python process (one jax import for all of them):
each through the CLI's ``main`` as ``python -m bitembed_jax.cli`` runs it, with its exit status and its
stdout / stderr captured apart. For the checks of refused input, which stop before anything heavy runs."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRIVER = """
import contextlib, io, json, os, sys
from bitembed_jax.cli import main
results = []
for case in json.load(open(sys.argv[1])):
    argv, env = (case["argv"], case["env"]) if isinstance(case, dict) else (case, {})
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors and --version
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # a crash: reported as the traceback a user would see
            import traceback
            err.write(traceback.format_exc())
            rc = 1
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    results.append({"argv": argv, "rc": rc, "out": out.getvalue(), "err": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def run_batch(argvs: list, tmp_path, env=None, timeout=600) -> list[dict]:
    """[{argv, rc, out, err}] of each command line (a list, or {"argv": [...], "env": {...}} to run it with those
    environment variables), in order."""
    cases, results = tmp_path / "cli_cases.json", tmp_path / "cli_results.json"
    cases.write_text(json.dumps(argvs))
    full_env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-c", _DRIVER, str(cases), str(results)], env=full_env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(results.read_text())


def one_line_error(result: dict) -> str:
    """The single ``error: ...`` line of a refused command (exit 2), or an assertion naming what was wrong."""
    err = result["err"].strip()
    assert result["rc"] == 2, result
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, result
    return err
