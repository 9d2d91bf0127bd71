"""The digits demo end to end (--quick): every variant trains, folds, exports and agrees with ONNX."""

from __future__ import annotations

import re

import pytest
import torch
from spikingjelly.activation_based import functional

from sj_realspike import demo

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

PERCENT = re.compile(r"^\d{1,3}\.\d\d%$")


def _picojoules(cell: str) -> float:
    value, unit = cell.split()
    return float(value) * {"pJ": 1, "nJ": 1e3, "µJ": 1e6, "mJ": 1e9}[unit]


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The demo table's rows, keyed by variant, each a {header: cell} dict."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    headers = re.split(r"\s{2,}", lines[start].strip())
    assert headers == demo.TABLE_HEADERS
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(headers), line
        rows[cells[0]] = dict(zip(headers, cells))
    return rows


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = _table(capsys.readouterr().out)

    assert list(rows) == [v.name for v in demo.VARIANTS]
    for name, row in rows.items():
        for column in ("acc trained", "acc deploy", "acc ONNX"):
            assert PERCENT.match(row[column]), f"{name}: {column} = {row[column]!r}"
        # Two epochs: not converged, but far above chance (10%).
        assert float(row["acc ONNX"].rstrip("%")) > 60.0, f"{name} did not learn: {row}"
        assert row["top-1 agree deploy/ONNX"] == "100.00% / 100.00%", f"{name}: {row}"
        assert row["acc trained"] == row["acc deploy"] == row["acc ONNX"]
        assert 0.0 <= float(row["spike rate"]) <= 1.0
        assert float(row["ORT us/sample"]) > 0
        trained, deploy = (int(p.replace(",", "")) for p in row["params trained -> deploy"].split(" -> "))
        assert trained > 0 and deploy > 0
        before, after = (_picojoules(e) for e in row["energy trained -> deploy"].split(" -> "))
        if name == "vanilla":
            assert before == after > 0, row
        else:  # folding turns the MACs of amplitude-scaled spikes into ACs: 4.6 pJ -> 0.9 pJ each
            assert before > after > 0, row
    # Element-wise amplitudes into the strided conv become an unshared conv: more parameters.
    deploy_params = {name: int(row["params trained -> deploy"].split(" -> ")[1].replace(",", ""))
                     for name, row in rows.items()}
    assert deploy_params["real-element"] > 50_000
    # The strided conv reads a SEW sum of two spike trains: two scaled copies untied, one tied.
    conv2 = 32 * 16 * 3 * 3
    assert deploy_params["sew-real-channel"] == deploy_params["sew-real-channel-tied"] + conv2

    assert (tmp_path / "amplitudes_and_rates.png").stat().st_size > 10_000
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == sorted(v.name for v in demo.VARIANTS)


def test_variants_option_names_the_rows(capsys):
    assert demo.main(["--variants", "real-channel", "nope"]) == 2
    assert "argument --variants: invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("variant", demo.VARIANTS[1:], ids=lambda v: v.name)
def test_variants_start_from_the_vanilla_weights(variant):
    """Same seed, same initial weights: with amplitudes at 1 Real Spike computes exactly the vanilla SNN."""
    x = demo.encode(demo.load_digits_split().test_x[:16], T=4)
    torch.manual_seed(0)
    vanilla = demo.build_model(demo.Variant("vanilla", residual=variant.residual), x).eval()
    torch.manual_seed(0)
    model = demo.build_model(variant, x).eval()
    for key, value in vanilla.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        expected, got = vanilla(x), model(x)
    functional.reset_net(vanilla)
    functional.reset_net(model)
    if variant.spike == "real":
        assert torch.equal(got, expected)
    else:  # ternary neurons also fire -1 below -threshold: a different function, same weights
        assert got.shape == expected.shape
