"""The offline demo runs end to end and shows what it claims."""

import math

from stitch.cli.demo import DemoConfig, run_demo


def test_demo_recovers_the_rotation_and_writes_a_report(tmp_path, capsys):
    out = run_demo(DemoConfig(out=str(tmp_path)))
    residual = [r for r in out["rotated"] if r.injection == "residual"]
    assert all(abs(r.loss_recovered - 1) < 1e-3 for r in residual)
    deep_baseline = [r for r in out["rotated"] if r.injection == "inputs_embeds" and r.source_layer > 0]
    assert all(r.loss_recovered < 0.99 for r in deep_baseline)
    assert all(math.isfinite(r.ce_spliced) for r in out["cross"])
    html = out["report"].read_text()
    assert out["report"] == tmp_path / "report.html" and html.count('class="plotly-graph-div"') == 4
    printed = capsys.readouterr().out
    assert "self-stitch identity" in printed and "report:" in printed
