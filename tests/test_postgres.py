"""PostgreSQL storage on a real server (tests/pg_server.py), and storage URLs that cannot work (one line, no trial).

The server: SWEEPS_TEST_POSTGRES_URL when set (.ci/run starts one for the whole run), else one started here for this
module; skipped with the reason where no PostgreSQL binaries or no psycopg exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import PYTHON, ROOT
from tests.pg_server import ENV, PostgresUnavailable, postgres_server
from tests.test_sweeps import SPACE, _cmd, _env, _free_port

N_TRIALS = 6


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason='psycopg not installed: pip install -e ".[postgres]"')
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(str(e))


def _new_database(server_url: str) -> str:
    """A fresh, empty database on the server: each test sees only its own studies."""
    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def _load(url: str, name: str) -> optuna.Study:
    from sweeps.study.storage import load_study

    return load_study(name, url)


@pytest.fixture(scope="module")
def three_workers(server_url, tmp_path_factory, toy_root) -> tuple[str, Path, list[tuple[str, str]]]:
    """Three workers started together on one study in one database; (url, sweep dir, their (stdout, stderr))."""
    url, sweep_dir = _new_database(server_url), tmp_path_factory.mktemp("three")
    cmd = _cmd(sweep_dir, "three", *SPACE, f"hydra.sweeper.n_trials={N_TRIALS}", f"hydra.sweeper.storage={url}")
    t0 = time.time()
    workers = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]  # fmt: skip
    outs = [w.communicate(timeout=600) for w in workers]
    print(f"3 workers, {N_TRIALS} trials on PostgreSQL: {time.time() - t0:.1f} s")
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outs]
    return url, sweep_dir, outs


@pytest.mark.slow
def test_three_workers_land_exactly_n_trials_without_duplicates(three_workers) -> None:
    url, sweep_dir, outs = three_workers
    trials = _load(url, "three").trials
    # the advisory ask lock: no surplus asks, so every asked trial ran and completed
    assert len(trials) == N_TRIALS and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == N_TRIALS  # no duplicated suggestion
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the workers shared the study
    assert sorted(int(p.name) for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()) == list(range(N_TRIALS))
    assert all(f"optuna-dashboard {url} --host 127.0.0.1" in out for out, _ in outs)


@pytest.mark.slow
def test_analysis_and_dashboard_read_the_study_from_the_url(three_workers, tmp_path) -> None:
    url, _, _ = three_workers
    proc = subprocess.run([PYTHON, "-m", "analysis", "load", url, "--study", "three", "-o", str(tmp_path / "t.csv"),
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "t.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + N_TRIALS
    proc = subprocess.run([PYTHON, "-m", "analysis", "report", url, "--study", "three", "-o", str(tmp_path / "rep"),
                           "--quiet", "--bootstrap", "100"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rep" / "index.md").is_file()

    port = _free_port()
    dashboard = Path(PYTHON).with_name("optuna-dashboard")
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        body = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["three"]
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_resume_with_a_changed_space_is_refused(three_workers) -> None:
    url, sweep_dir, _ = three_workers
    changed = ["optim.lr=tag(log, interval(1e-5, 1e-3))", "optim.batch_size=choice(4, 8)"]
    proc = subprocess.run(_cmd(sweep_dir, "three", *changed, f"hydra.sweeper.n_trials={N_TRIALS + 2}",
                               f"hydra.sweeper.storage={url}"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "was run with a different space" in proc.stderr and "Traceback" not in proc.stderr
    assert len(_load(url, "three").trials) == N_TRIALS  # nothing asked


@pytest.mark.slow
def test_sigkilled_worker_then_same_command_ends_at_exactly_n_trials(server_url, tmp_path, toy_root) -> None:
    url = _new_database(server_url)
    # long enough that the kill below lands mid-training (120 steps once finished between two polls on CI)
    args = [*SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.lease_seconds=3", "optim.max_steps=600",
            f"hydra.sweeper.storage={url}"]  # fmt: skip
    worker = subprocess.Popen(_cmd(tmp_path, "kill", *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline, running = time.time() + 180, None
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            trials = _load(url, "kill").get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            continue
        running = trials[0] if trials else None
        if running is not None and (tmp_path / str(running.number) / "train_log.jsonl").is_file():
            break  # training has begun: kill inside the trial, not before or after it
    else:
        raise AssertionError("no trial started training")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # let the lease expire

    proc = subprocess.run(_cmd(tmp_path, "kill", *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _load(url, "kill").trials
    lost = trials[running.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs.get("requeued")
    redo = [t for t in trials if t.user_attrs.get("requeued_from") == running.number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE and redo[0].params == lost.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_ask_lock_excludes_other_sessions(server_url) -> None:
    import sqlalchemy

    from sweeps.study.storage import ASK_LOCK_KEY, ask_lock

    url = _new_database(server_url)
    other = sqlalchemy.create_engine(url)
    try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:k)")
    with other.connect() as conn:
        with ask_lock(url):
            assert conn.execute(try_lock, {"k": ASK_LOCK_KEY}).scalar() is False  # held by the asking worker
        assert conn.execute(try_lock, {"k": ASK_LOCK_KEY}).scalar() is True  # released after the ask
    other.dispose()


# ---------------------------------------------------------------------------------------------------------------
# storage URLs that cannot work: one line naming hydra.sweeper.storage, before any trial


def _sweep_error(storage: str, tmp_path: Path) -> str:
    from sweeps.study.runner import Sweep, SweepError, SweepSettings

    with pytest.raises(SweepError) as err:
        Sweep(SweepSettings(storage=storage), ["optim.lr=interval(1e-4, 1e-3)"], tmp_path / "sweep")
    return str(err.value)


@pytest.mark.parametrize(("storage", "expected"), [
    ("foo://host/db", "unknown database scheme 'foo'"),
    ("sqlite:////no/such/folder/s.db", "no folder '/no/such/folder'"),
    ("mysql://u@host/db", "needs a driver that is not installed"),
    ("://", "neither a journal file path nor a database URL"),
])  # fmt: skip
def test_unusable_storage_urls_are_one_line(storage, expected, tmp_path) -> None:
    message = _sweep_error(storage, tmp_path)
    assert message.startswith("hydra.sweeper.storage: ") and expected in message and "\n" not in message
    assert not (tmp_path / "sweep").exists()


def test_unreachable_server_is_one_line_and_hides_the_password(tmp_path) -> None:
    pytest.importorskip("psycopg", reason='psycopg not installed: pip install -e ".[postgres]"')
    message = _sweep_error(f"postgresql://u:secret@127.0.0.1:{_free_port()}/db", tmp_path)
    assert message.startswith("hydra.sweeper.storage: cannot open 'postgresql+psycopg://u:***@127.0.0.1:")
    assert "secret" not in message and "\n" not in message


def test_postgres_url_without_a_driver_names_the_extra(tmp_path) -> None:
    # the CLI as a user meets it, with both drivers hidden (None in sys.modules makes their import fail)
    argv = _cmd(tmp_path, "nodriver", *SPACE, "hydra.sweeper.storage=postgresql://u@127.0.0.1/db")[2:]
    code = ("import runpy, sys; sys.modules['psycopg'] = sys.modules['psycopg2'] = None; "
            f"sys.argv = {argv!r}; runpy.run_module('sweeps.train', run_name='__main__', alter_sys=True)")  # fmt: skip
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # which driver SQLAlchemy names (psycopg2 or psycopg) depends on its version
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: hydra.sweeper.storage: 'postgresql://u@127.0.0.1/db' needs a driver that is not")
    assert line.endswith('pip install -e ".[postgres]"')
    assert not any(p.name.isdigit() for p in tmp_path.iterdir())  # no trial started
