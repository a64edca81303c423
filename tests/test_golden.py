"""The port reproduces the upstream JAX outputs stored in tests/golden, January and May (same code path as the CLI)."""
import numpy as np
import pytest

from phoenix_torch import golden

from conftest import golden_files


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.name)
def test_golden_file_matches_upstream(path):
    rows = golden.run_case(path)
    assert {impl for impl, *_ in rows} == {"dense", "isolated"}
    names = {name for _, name, _, _ in rows}
    assert names & {"logits", "user_representation"}
    if path.parent.name == "may" and "ranker" in path.name:
        assert "continuous_preds" in names    # the May head is compared too
    for impl, name, err, tol in rows:
        assert err <= tol, f"{path.name} {impl} {name}: max abs err {err:.3e} > {tol:.0e}"


def test_cli_passes_on_shipped_files(capsys):
    files = golden_files()
    assert {p.parent.name for p in files} >= {"golden", "may"}     # January and May files
    assert golden.main([str(p) for p in files]) == 0
    assert "all ok" in capsys.readouterr().out


def test_cli_fails_on_perturbed_may_dwell_weights(tmp_path, capsys):
    src = next(p for p in golden_files() if p.name == "may_ranker_fp32.npz")
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    data["param/phoenix_model/history_dwell_time_proj2"] = data["param/phoenix_model/history_dwell_time_proj2"] * 3
    np.savez(tmp_path / "perturbed.npz", **data)
    assert golden.main([str(tmp_path / "perturbed.npz")]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_fails_on_a_perturbed_file(tmp_path, capsys):
    src = golden_files()[0]
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    key = next(k for k in data if k.startswith("param/") and "query" in k)
    data[key] = data[key] * 1.5
    bad = tmp_path / "perturbed.npz"
    np.savez(bad, **data)
    assert golden.main([str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_reports_a_broken_file(tmp_path, capsys):
    src = golden_files()[0]
    with np.load(src) as z:
        data = {k: z[k] for k in z.files if not k.startswith("emb/")}
    bad = tmp_path / "no_emb.npz"
    np.savez(bad, **data)
    assert golden.main([str(bad)]) == 1
    assert "emb/" in capsys.readouterr().out
