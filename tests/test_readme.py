"""Every command block of README.md runs here, read from README.md itself, with its output checked.

How a block runs (the README cannot drift: change a block and this test runs the new one):
- bash: each command (continuation lines joined, `# comments` dropped, globs expanded as bash would) runs in
  a workspace folder that links the checkout's `tests/`, with this interpreter as `.venv/bin/python` and the
  checkout first on PYTHONPATH. `./scripts/setup.sh &&` is dropped: it made the environment this test runs
  in (re-running it would reinstall the project into the shared .venv). Paths are the README's except
  `/tmp/<x>` -> `<workspace>/tmp/<x>`, and the project's `triton_repo/` (the default of `export.build
  --output` and `serving.quickstart --model-repository`) -> `<workspace>/triton_repo`.
- `export.build` makes its build unless this session made one with the same options (conftest.build_key:
  the May build and the features build fixtures); its output folder then links to that build.
- `serving.server ...  # leave it running` starts in the background on free ports (added as --http-port,
  --grpc-port, --metrics-port); the client commands get that server's `--url`.
- python: exec'd in the workspace, the README's `127.0.0.1:8001` replaced by the running server's address.
- json: the feature declaration of "Add a feature", saved as `features.json`, as the README says.
- A block after `<!-- not run by tests/test_readme.py: REASON -->` does not run; the test checks that the
  marked blocks are exactly those needing what REASON says (NEEDS).

Each README section with runnable blocks has its test below (SECTION_TESTS); the client examples run on the
demo build and on the May mini folder.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import BUILDS, MAY_ARTIFACTS, PIPELINE_ATOL, build_key

from serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"<!-- not run by tests/test_readme\.py: (\w+) -->")
README_URL = "127.0.0.1:8001"          # the client's default, as the README's Python examples write it
DEFAULT_REPO = "triton_repo"          # export.build's default output, the quickstart's default repository
TABLE_ROW = re.compile(r"^│\s*(\d+)\s*│(.*)│\s*$")

# What a marked block needs that a test run cannot give it. A block is marked iff one of these matches it.
NEEDS = {
    "suite": re.compile(r"-m pytest\b"),                                  # the test suite itself (.ci/run runs it)
    "gpu": re.compile(r"gpu-tensorrt|gpu-onnxruntime|gpu-python|tests/gpu|gpu_run\.sh|--engines \S*tensorrt"
                      r"|\bdocker\b|nvcr\.io"),                          # a CUDA GPU, TensorRT, NVIDIA's container
    "cluster": re.compile(r"\bkubectl\b"),                               # a Kubernetes cluster
    "benchmark": re.compile(r"-m benchmarks\b"),                          # timing runs of minutes: never in tests
}


@dataclass
class Block:
    section: str
    lang: str
    code: str
    line: int
    mark: str | None = None


def readme_blocks() -> list[Block]:
    lines, out, section, i = README.read_text().splitlines(), [], "", 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w+)\s*$", lines[i])
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        elif fence:
            indent, end = len(fence.group(1)), i + 1
            while lines[end].strip() != "```":
                end += 1
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            mark = MARK.search(before)
            out.append(Block(section, fence.group(2), "\n".join(ln[indent:] for ln in lines[i + 1:end]), i + 1,
                             mark.group(1) if mark else None))
            i = end
        i += 1
    return out


def section_blocks(section: str) -> list[Block]:
    found = [b for b in readme_blocks() if b.section == section and b.mark is None]
    assert found, f"README.md has no runnable block under {section!r}"
    return found


def commands(code: str) -> list[tuple[list[str], str]]:
    """A bash block -> [(argv, the line as written)], one per command (`&&` chains split)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        parts, argv = [], shlex.split(line, comments=True)
        for token in argv + ["&&"]:
            if token == "&&":
                if parts:
                    out.append((parts, line))
                parts = []
            else:
                parts.append(token)
    return out


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in m.group(2).split("│")] for m in map(TABLE_ROW.match, text.splitlines()) if m]


@contextmanager
def chdir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@dataclass
class Server:
    process: subprocess.Popen
    grpc_url: str
    output: list = field(default_factory=list)


def _collect(server: Server):
    for line in server.process.stdout:
        server.output.append(line)


class Workspace:
    """The folder the README's commands run in, the builds they made and the servers they started."""

    def __init__(self, root: Path):
        self.root = root
        (root / "tests").symlink_to(ROOT / "tests")
        (root / "tmpdir").mkdir()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "TMPDIR": str(root / "tmpdir")}
        self.servers: dict[str, Server] = {}
        # every build command of the README, by the folder it writes: built on demand, once
        self.builds = {}
        for block in readme_blocks():
            if block.mark is None and block.lang == "json":       # the README saves it as features.json
                assert not (root / "features.json").exists(), "one JSON block: the feature declaration"
                (root / "features.json").write_text(block.code)
            if block.mark is None and block.lang == "bash":
                for argv, _ in commands(block.code):
                    if argv[1:3] == ["-m", "export.build"]:
                        self.builds[option(argv, "--output") or DEFAULT_REPO] = self.argv(argv)

    # ---------------------------------------------------------------- commands as written
    def path(self, token: str) -> str:
        """The README's /tmp/<x> -> the workspace's tmp/<x>; other paths stay as written."""
        return str(self.root / token.lstrip("/")) if token.startswith("/tmp/") else token

    def argv(self, argv: list[str]) -> list[str]:
        assert argv[0] == ".venv/bin/python", f"README commands run the project's venv: {argv}"
        out = [sys.executable]
        for token in argv[1:]:
            token = self.path(token)
            matches = sorted(glob.glob(token, root_dir=self.root)) if glob.has_magic(token) else [token]
            assert matches, f"{token!r} matches no file"
            out += matches
        module = out[2]
        if module == "export.build" and "--output" not in out:
            out += ["--output", DEFAULT_REPO]
        if module == "serving.quickstart" and "--model-repository" not in out:
            out += ["--model-repository", DEFAULT_REPO]
        return out

    def run(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)

    def build(self, output: str) -> Path:
        """The README's build of `output`: made once per set of options in this session."""
        argv = self.builds[output]
        args = argv[3:argv.index("--output")] + argv[argv.index("--output") + 2:]
        key, folder = build_key(args, self.root), self.root / self.path(output)
        if key in BUILDS:
            if BUILDS[key] != folder:
                folder.parent.mkdir(parents=True, exist_ok=True)
                if not folder.exists():
                    folder.symlink_to(BUILDS[key])
            return folder
        done = self.run(argv, timeout=900)
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "repository complete" in done.stdout + done.stderr
        BUILDS[key] = folder
        return folder

    def server(self, repository: str) -> Server:
        """`python -m serving.server --model-repository <repository>` (the README's form), on free ports."""
        if repository not in self.servers:
            self.start([repository])
        return self.servers[repository]

    def start(self, repositories: list[str]):
        """Start the servers of several repositories at once (they load in parallel), then wait for each."""
        for repo in repositories:
            if repo in self.servers:
                continue
            self.build(repo)
            ports = [free_port() for _ in range(3)]
            argv = self.argv([".venv/bin/python", "-m", "serving.server", "--model-repository", repo]) + \
                ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
            p = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
            server = Server(p, f"127.0.0.1:{ports[1]}")
            threading.Thread(target=_collect, args=(server,), daemon=True).start()
            self.servers[repo] = server
        deadline = time.monotonic() + 300
        for repo in repositories:
            s = self.servers[repo]
            while not any(line.startswith("ready in") for line in list(s.output)):
                assert s.process.poll() is None, f"server on {repo} exited: {''.join(s.output)[-3000:]}"
                assert time.monotonic() < deadline, f"server on {repo} not ready: {''.join(s.output)[-3000:]}"
                time.sleep(0.2)

    def stop(self):
        for s in self.servers.values():
            s.process.send_signal(signal.SIGINT)          # the launcher stops tritonserver cleanly on SIGINT
        for s in self.servers.values():
            try:
                s.process.wait(60)
            except subprocess.TimeoutExpired:
                s.process.kill()
                s.process.wait()

    # ---------------------------------------------------------------- blocks
    def run_section(self, section: str, repository: str = DEFAULT_REPO) -> list[tuple[Block, list, object]]:
        """Run every unmarked block of `section` in order; `repository` stands for the README's triton_repo
        (the demo build) so that the same examples run on another build. Returns (block, argv, result)."""
        results, server = [], None
        for block in section_blocks(section):
            if block.lang == "json":
                (self.root / "features.json").write_text(block.code)
                results.append((block, None, json.loads(block.code)))
            elif block.lang == "python":
                server = server or self.server(repository)
                code = block.code.replace(README_URL, server.grpc_url) \
                    .replace(f'"{DEFAULT_REPO}"', repr(str(self.root / self.path(repository))))
                scope, printed = {"__name__": "readme"}, io.StringIO()
                with chdir(self.root), redirect_stdout(printed):
                    exec(compile(code, f"README.md:{block.line}", "exec"), scope)
                scope["printed"] = printed.getvalue()
                results.append((block, None, scope))
            else:
                assert block.lang == "bash", f"README.md:{block.line}: a {block.lang} block this test cannot run"
                for argv, line in commands(block.code):
                    if argv == ["./scripts/setup.sh"]:
                        continue                       # the environment this test runs in
                    argv = [repository if a == DEFAULT_REPO else a for a in argv]
                    module = argv[2] if argv[1:2] == ["-m"] else None
                    if module == "export.build":
                        results.append((block, argv, self.build(option(argv, "--output") or DEFAULT_REPO)))
                    elif module == "serving.server":
                        assert "leave it running" in line and argv[3:] == ["--model-repository", argv[4]], line
                        server = self.server(argv[4])
                        results.append((block, argv, server))
                    elif module in ("serving.client", "serving.quickstart", "phoenix_torch.golden"):
                        if module == "serving.quickstart":
                            self.build(repository)             # the README's demo build, made once
                        full = self.argv(argv)
                        if module == "serving.client" and "--url" not in full:
                            server = server or self.server(repository)
                            full += ["--url", server.grpc_url]
                        results.append((block, argv, self.run(full)))
                    else:
                        raise AssertionError(f"README.md:{block.line}: no way to run {line!r} here")
        return results


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace(tmp_path_factory.mktemp("readme"))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def servers(ws, may_repo, features_repo):
    """The three builds the README serves (demo, May mini folder, features), their servers started together."""
    ws.start([DEFAULT_REPO, "/tmp/may", "/tmp/f"])
    return ws


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{shlex.join(result.args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


# ------------------------------------------------------------------------------------------ the README itself

SECTION_TESTS = {
    "phoenix-serving: X's Phoenix ranker, exact and fast behind Triton": "test_quickstart",
    "Serve the May release": "test_serve_the_may_release",
    "Check the port against upstream": "test_check_the_port_against_upstream",
    "The model in Python": "test_the_model_in_python",
    "Add a feature": "test_add_a_feature",
    "Build a repository": "test_build_a_repository",
    "Serve and score": "test_serve_and_score",
    "Bring your own embeddings": "test_bring_your_own_embeddings",
}


def test_every_section_with_command_blocks_has_its_test():
    sections = {b.section for b in readme_blocks() if b.mark is None}
    assert sections == set(SECTION_TESTS), "a README section with runnable blocks needs its test here"
    assert all(name in globals() for name in SECTION_TESTS.values())


def test_the_marked_blocks_are_exactly_those_a_test_run_cannot_run():
    blocks = readme_blocks()
    assert {b.mark for b in blocks if b.mark} == set(NEEDS), "each reason marks a block"
    for b in blocks:
        needs = sorted(reason for reason, pattern in NEEDS.items() if pattern.search(b.code))
        if b.mark:
            assert b.mark in needs, f"README.md:{b.line} is marked {b.mark!r} but needs {needs or 'nothing'}"
        else:
            assert not needs, f"README.md:{b.line} needs {needs}: mark it `<!-- not run by tests/test_readme.py: ...`"


def test_ci_runs_exactly_the_readmes_test_command():
    (suite,) = [b for b in readme_blocks() if b.mark == "suite"]
    assert "--durations=" in suite.code, "the test command lists the slowest tests"
    assert suite.code.strip() in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quickstart(ws):
    (block, argv, result), = ws.run_section(SECTION_NAMES["test_quickstart"])
    out = ok(result)
    assert "Phoenix ranking for demo user" in out and "random weights" in out and "scored in" in out
    assert len(table_rows(out)) == 8, out
    assert not list((ws.root / "tmpdir").glob("tritonserver-*.log")), "a quickstart that worked removes its log"
    from serving.quickstart import DEMO_BUILD
    readme_build = ws.builds[DEFAULT_REPO]
    assert readme_build[-2:] == ["--output", DEFAULT_REPO]
    assert build_key(DEMO_BUILD) == build_key(readme_build[3:-2], ws.root), \
        "the quickstart builds what the README's `export.build --preset demo` builds"


def test_the_quickstart_takes_its_ports(ws, capsys):
    import socket

    from serving import quickstart
    ws.build(DEFAULT_REPO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert quickstart.main(["--model-repository", str(ws.root / DEFAULT_REPO), "--grpc-port", str(port)]) == 1
    assert f"gRPC port {port} on 127.0.0.1 is already in use" in capsys.readouterr().out.replace("\n", "")


def test_serve_the_may_release(servers):
    results = servers.run_section("Serve the May release")
    assert [argv[2] for _, argv, _ in results] == ["export.build", "serving.server", "serving.client"]
    out = ok(results[-1][2])
    assert "PIPELINE RESULTS" in out
    want = [ln for ln in (MAY_ARTIFACTS / "expected_pipeline_fp32.txt").read_text().splitlines()
            if ln[:2].strip().isdigit()]
    mine = [ln for ln in out.splitlines() if ln[:2].strip().isdigit()]
    assert len(mine) == 30 and [m.split()[:8] for m in mine[:3]] == [w.split()[:8] for w in want[:3]]
    got, expected = np.load(servers.root / "pipeline.npz"), np.load(MAY_ARTIFACTS / "expected_pipeline_fp32.npz")
    assert set(got.files) == set(expected.files) - {"user_representation"}      # upstream's keys but that one
    for key in ("retrieved_post_ids", "retrieved_author_ids", "ranked"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_allclose(got["probs"], expected["probs"], atol=PIPELINE_ATOL, rtol=0)
    written = next(ln for ln in out.splitlines() if ln.startswith("wrote pipeline.npz: "))
    assert all(f"{k} {list(expected[k].shape)}" in written for k in got.files), written


def test_check_the_port_against_upstream(ws):
    (block, argv, result), = ws.run_section("Check the port against upstream")
    out = ok(result)
    assert out.strip().endswith("golden: all ok")
    files = sorted(glob.glob("tests/golden/*.npz", root_dir=ROOT) + glob.glob("tests/golden/may/*.npz", root_dir=ROOT))
    assert files and all(Path(f).name in out for f in files)


def test_the_model_in_python(ws):
    (block, _, scope), = ws.run_section("The model in Python")
    assert tuple(scope["out"].logits.shape) == (2, 8, 19)
    printed = eval(scope["printed"])                     # the dict the example prints: action -> probability
    assert list(printed) == list(scope["cfg"].actions) and all(0 < p < 1 for p in printed.values())


def test_add_a_feature(servers):
    from model_fixtures import EXTRA_FEATURES

    from export.models import features_from_json
    results = servers.run_section("Add a feature")
    declared, built, served, scored = [r for _, _, r in results]
    assert features_from_json(declared) == EXTRA_FEATURES
    manifest = json.loads((built / "manifest.json").read_text())
    assert {"user_language_hashes", "candidate_media_category"} <= {s["name"] for s in manifest["served"]
                                                                    ["phoenix_ranker"]["inputs"]}
    rows = table_rows(ok(scored))
    assert sorted(r[0] for r in rows) == ["11", "12"] and "user 42" in scored.stdout


def test_build_a_repository(ws):
    (block, argv, folder), = ws.run_section("Build a repository")
    from phoenix_runtime.manifest import read_manifest, verify
    manifest = read_manifest(folder)
    assert (manifest["preset"], manifest["release"], manifest["target"]) == ("demo", "january", "cpu")
    assert verify(folder) == []


@pytest.mark.parametrize("repository", [DEFAULT_REPO, "/tmp/may"], ids=["demo", "may"])
def test_serve_and_score(servers, repository):
    """The same commands and Python on the demo build and on the May mini folder (January action names on
    a May model are the same actions)."""
    results = servers.run_section("Serve and score", repository)
    (_, _, server), (_, _, demo), (_, _, scored), (_, _, scope) = results
    assert len(table_rows(ok(demo))) == 8 and "note: no --user-id" in demo.stderr and "demo user" in demo.stdout
    rows = table_rows(ok(scored))
    assert "for user 42, 1 history items" in scored.stdout.replace("\n", " ")
    assert sorted(r[0] for r in rows) == ["11", "12"] and [r[1] for r in rows] == \
        [{"11": "1", "12": "2"}[r[0]] for r in rows]
    result = scope["result"]
    assert sorted(result.ranking) == [0, 1] and np.isfinite(result.scores["retweet_score"]).all()
    table_final = {r[0]: float(r[2]) for r in rows}                  # the CLI's table and the Python API agree
    np.testing.assert_allclose([table_final["11"], table_final["12"]], result.final_score, rtol=1e-3)
    from serving.client import PhoenixClient
    with PhoenixClient(server.grpc_url) as client:
        same = client.score(user_id=42, history=[(5, 1, ["server_tweet_fav", "server_tweet_reply"], 2)],
                            candidates=[(11, 1, 0), {"post_id": 12, "author_id": 2, "product_surface": 3,
                                                     "video_duration_ms": 15000, "in_network": False}])
    np.testing.assert_array_equal(same.final_score, result.final_score)


@pytest.mark.parametrize("repository", [DEFAULT_REPO, "/tmp/may"], ids=["demo", "may"])
def test_bring_your_own_embeddings(servers, repository):
    results = servers.run_section("Bring your own embeddings", repository)
    (_, _, scope), (_, _, cli) = results
    from serving.client import PhoenixClient
    with PhoenixClient(servers.server(repository).grpc_url) as client:
        hashes_path = client.score(user_id=42, history=[(5, 1, ["favorite"], 2)], candidates=[(11, 1, 0), (12, 2, 3)])
    np.testing.assert_allclose(scope["result"].final_score, hashes_path.final_score, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scope["result"].scores["favorite_score"], hashes_path.scores["favorite_score"],
                               atol=1e-5, rtol=0)
    out = ok(cli)
    assert re.search(r"┃\s*rank\s*┃\s*candidate\s*┃\s*author_id\s*┃\s*final\s*┃", out), out   # no post ids
    rows = sorted(table_rows(out))
    assert [(r[0], r[1]) for r in rows] == [("0", "1"), ("1", "2")]              # index in the request, author
    np.testing.assert_allclose([float(r[2]) for r in rows], hashes_path.final_score, rtol=1e-3)


SECTION_NAMES = {test: section for section, test in SECTION_TESTS.items()}
